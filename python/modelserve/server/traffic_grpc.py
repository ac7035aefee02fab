"""The gRPC ``modelserve.v1.TrafficService`` (protos/modelserve.proto): traffic policies,
rollouts, readouts, labels, rollback and the audit log, served by the gRPC frontend beside the
inference service.
Handlers only translate: JSON text in, ``runtime.traffic`` (a TrafficManager), JSON text out.
Reads need the inference token when one is set, changes the admin token (else the inference
token), as over HTTP. Every change is audited by the traffic manager, its refusals included; a
request refused here, before the manager is called, is recorded as the change's failure. The
actor is the request's ``actor``, else the ``x-modelserve-actor`` metadata, else
``mtls:<client certificate subject>`` under mutual TLS, else ``grpc:<peer>`` (common.py, Note
[Audit actor])."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpc

from .._proto import modelserve_pb2 as pb
from ..errors import InvalidArgumentError, NotFoundError
from .common import grpc_actor

if TYPE_CHECKING:
    from .grpc import GrpcFrontend

__all__ = ["TRAFFIC_SERVICE", "traffic_handler", "traffic_method_handlers"]

TRAFFIC_SERVICE = "modelserve.v1.TrafficService"


def _json(value: Any) -> Any:
    return pb.JsonResponse(json=json.dumps(value, separators=(",", ":")))


def _parse(text: str, what: str) -> Any:
    try:
        value = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as e:
        raise InvalidArgumentError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _model(request: Any) -> str:
    if not request.model:
        raise InvalidArgumentError("model is empty; name the model (endpoint)")
    return request.model


def _actor(request: Any, context: grpc.aio.ServicerContext) -> str:
    return grpc_actor(context, request.actor)


def traffic_handler(frontend: GrpcFrontend) -> grpc.GenericRpcHandler:
    """The service over ``frontend``, for a grpc.aio server (:func:`traffic_method_handlers`)."""
    return grpc.method_handlers_generic_handler(TRAFFIC_SERVICE, traffic_method_handlers(frontend))


def traffic_method_handlers(frontend: GrpcFrontend) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers by rpc name over ``frontend`` (a GrpcFrontend: its runtime,
    authorisation, message size limits and error mapping)."""
    traffic = frontend.runtime.traffic

    def refusals(request: Any, context: Any, action: str) -> Any:
        """Records a refusal of the request here as a failed ``action`` (the manager records the
        rest)."""
        return traffic.refusals(_actor(request, context), action, request.model)

    async def get_policy(request: Any, context: Any) -> Any:
        model = _model(request)
        policy = traffic.get_policy(model)
        if policy is None:
            frontend.runtime.model_versions(model)  # an unknown model is NOT_FOUND
        return _json({"endpoint": model, "policy": policy})

    async def set_policy(request: Any, context: Any) -> Any:
        with refusals(request, context, "policy.set"):
            model = _model(request)
            policy = _parse(request.policy_json, f"policy_json of model '{model}'")
        return _json({"endpoint": model, "policy": await asyncio.to_thread(
            traffic.set_policy, model, policy, actor=_actor(request, context))})

    async def clear_policy(request: Any, context: Any) -> Any:
        with refusals(request, context, "policy.clear"):
            model = _model(request)
        await asyncio.to_thread(traffic.clear_policy, model, actor=_actor(request, context))
        return _json({"endpoint": model, "policy": None})

    async def readout(request: Any, context: Any) -> Any:
        model = _model(request)
        if request.window_s < 0:
            raise InvalidArgumentError(f"window_s must be >= 0 (0: every kept sample), got {request.window_s}")
        return _json(await asyncio.to_thread(traffic.readout, model, request.window_s or None))

    async def start_rollout(request: Any, context: Any) -> Any:
        with refusals(request, context, "rollout.start"):
            model = _model(request)
            spec = _parse(request.rollout_json, f"rollout_json of model '{model}'")
        return _json(await asyncio.to_thread(traffic.start_rollout, model, spec, actor=_actor(request, context)))

    async def get_rollout(request: Any, context: Any) -> Any:
        model = _model(request)
        status = traffic.rollout(model)
        if status is None:
            raise NotFoundError(f"endpoint '{model}' has no rollout")
        return _json(status)

    def action(name: str) -> Any:
        async def run(request: Any, context: Any) -> Any:
            with refusals(request, context, f"rollout.{name}"):
                model = _model(request)
            method = getattr(traffic, f"{name}_rollout")
            return _json(await asyncio.to_thread(method, model, actor=_actor(request, context)))

        return run

    async def list_audit(request: Any, context: Any) -> Any:
        entries = await asyncio.to_thread(traffic.audit, request.model or None, request.limit or 100)
        return pb.AuditResponse(entries_json=[json.dumps(e, separators=(",", ":")) for e in entries])

    async def set_label(request: Any, context: Any) -> Any:
        with refusals(request, context, "label"):
            model = _model(request)
            if not request.label:
                raise InvalidArgumentError(f"SetLabel of model '{model}': label is empty; name the label")
            if request.version == 0:
                raise InvalidArgumentError(f"SetLabel of model '{model}': version is required (a version number)")
        return _json(await asyncio.to_thread(traffic.set_label, model, request.label, request.version,
                                             actor=_actor(request, context)))

    async def rollback(request: Any, context: Any) -> Any:
        with refusals(request, context, "rollback"):
            model = _model(request)
        return _json(await asyncio.to_thread(traffic.rollback, model, request.version or None,
                                             label=request.label or None, actor=_actor(request, context)))

    read, change = "inference", "admin"
    methods = {
        "GetPolicy": (get_policy, pb.EndpointRequest, read),
        "SetPolicy": (set_policy, pb.SetPolicyRequest, change),
        "ClearPolicy": (clear_policy, pb.EndpointRequest, change),
        "GetReadout": (readout, pb.ReadoutRequest, read),
        "StartRollout": (start_rollout, pb.StartRolloutRequest, change),
        "GetRollout": (get_rollout, pb.EndpointRequest, read),
        "PauseRollout": (action("pause"), pb.EndpointRequest, change),
        "ResumeRollout": (action("resume"), pb.EndpointRequest, change),
        "PromoteRollout": (action("promote"), pb.EndpointRequest, change),
        "AbortRollout": (action("abort"), pb.EndpointRequest, change),
        "ListAudit": (list_audit, pb.AuditRequest, read),
        "SetLabel": (set_label, pb.SetLabelRequest, change),
        "Rollback": (rollback, pb.RollbackRequest, change),
    }
    return {
        name: grpc.unary_unary_rpc_method_handler(
            frontend._unary_behaviour(name, fn, auth),
            request_deserializer=frontend._deserializer(cls),
            response_serializer=lambda m: m.SerializeToString(),
        )
        for name, (fn, cls, auth) in methods.items()
    }
