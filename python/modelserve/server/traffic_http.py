"""HTTP routes of traffic management (modelserve's own, beside the protocol's ``/v2`` routes).
Handlers only translate: decode, call ``runtime.traffic`` (a TrafficManager), encode.

::

    GET    /v2/models/{m}/traffic                 {"endpoint", "policy"} (policy null: none)
    PUT    /v2/models/{m}/traffic                 body: a policy (modelserve.traffic.policy)
    DELETE /v2/models/{m}/traffic                 requests go to the default version again
    GET    /v2/models/{m}/traffic/readout         ?window_s=SECONDS: the A/B readout
    GET    /v2/models/{m}/traffic/audit           ?limit=N: the endpoint's audit entries
    GET    /v2/traffic/audit                      ?limit=N: every endpoint's
    GET    /v2/models/{m}/rollout                 the current or last rollout (404: none)
    POST   /v2/models/{m}/rollout                 body: a rollout spec; starts it
    POST   /v2/models/{m}/rollout/{action}        pause | resume | promote | abort
    POST   /v2/models/{m}/labels/{label}          body {"version": V}: points the label at V
    POST   /v2/models/{m}/rollback                body {"version": V} and/or {"label": L}, or {}

The last two answer ``{"model", "label", "before", "after"}`` (label null: the default version).
Changes need the admin token when one is set (else the inference token), reads the inference
token. Every change is audited by the traffic manager, its refusals included; a body refused
here, before the manager is called, is recorded as the change's failure. The actor is the
``X-Modelserve-Actor`` header, else ``http:<client address>`` (common.py, Note [Audit actor]).
Errors use the shared status table: an invalid policy or body is 400, an unknown model, version
or label 404, a target that is not READY 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ..errors import InvalidArgumentError, NotFoundError
from .common import http_actor

__all__ = ["traffic_routes"]

ACTIONS = ("pause", "resume", "promote", "abort")


def _query_number(request: Request, key: str, kind: type, what: str) -> Any:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidArgumentError(f"{what}: query parameter '{key}' must be a {kind.__name__}, got {raw!r}") from None
    if value <= 0:
        raise InvalidArgumentError(f"{what}: query parameter '{key}' must be > 0, got {raw!r}")
    return value


def _fields(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"{what}: unknown field '{unknown[0]}' in the request body; expected {', '.join(map(repr, allowed))}"
        )
    return body


def traffic_routes(api: Any, route: Callable[..., Route], read_auth: Any, change_auth: Any) -> list[Route]:
    """The routes above; ``api`` is the HTTP frontend's handler object (body parsing, replies),
    ``route(path, handler, methods, check)`` wraps a handler with authorisation and errors."""
    from .http import _json_reply  # the frontend's reply encoding

    traffic = api.runtime.traffic

    async def get_policy(request: Request) -> Any:
        model, _ = api._target(request)
        policy = traffic.get_policy(model)
        if policy is None:
            api.runtime.model_versions(model)  # an unknown model is a 404, not an empty policy
        return _json_reply({"endpoint": model, "policy": policy})

    def refusals(request: Request, action: str) -> Any:
        """Records a refusal of the request's body as a failed ``action`` (the manager records
        the rest)."""
        return traffic.refusals(http_actor(request), action, request.path_params["model"])

    async def set_policy(request: Request) -> Any:
        with refusals(request, "policy.set"):
            model, _ = api._target(request)
            body = await api._json_body(request, f"traffic policy of model '{model}'")
        policy = await asyncio.to_thread(traffic.set_policy, model, body, actor=http_actor(request))
        return _json_reply({"endpoint": model, "policy": policy})

    async def clear_policy(request: Request) -> Any:
        with refusals(request, "policy.clear"):
            model, _ = api._target(request)
        await asyncio.to_thread(traffic.clear_policy, model, actor=http_actor(request))
        return _json_reply({"endpoint": model, "policy": None})

    async def readout(request: Request) -> Any:
        model, _ = api._target(request)
        window = _query_number(request, "window_s", float, f"readout of model '{model}'")
        return _json_reply(await asyncio.to_thread(traffic.readout, model, window))

    async def audit(request: Request) -> Any:
        model = request.path_params.get("model")
        limit = _query_number(request, "limit", int, "audit log") or 100
        entries = await asyncio.to_thread(traffic.audit, model, limit)
        return _json_reply({"entries": entries})

    async def get_rollout(request: Request) -> Any:
        model, _ = api._target(request)
        status = traffic.rollout(model)
        if status is None:
            raise NotFoundError(f"endpoint '{model}' has no rollout")
        return _json_reply(status)

    async def start_rollout(request: Request) -> Any:
        with refusals(request, "rollout.start"):
            model, _ = api._target(request)
            body = await api._json_body(request, f"rollout of model '{model}'")
        return _json_reply(await asyncio.to_thread(traffic.start_rollout, model, body, actor=http_actor(request)))

    async def rollout_action(request: Request) -> Any:
        action = request.path_params["action"]
        if action not in ACTIONS:  # no such route: nothing was asked of the rollout
            raise NotFoundError(f"no rollout action '{action}'; expected one of {', '.join(ACTIONS)}")
        with refusals(request, f"rollout.{action}"):
            model, _ = api._target(request)
        method = getattr(traffic, f"{action}_rollout")
        return _json_reply(await asyncio.to_thread(method, model, actor=http_actor(request)))

    async def set_label(request: Request) -> Any:
        with refusals(request, "label"):
            model, _ = api._target(request)
            label = request.path_params["label"]
            what = f"label '{label}' of model '{model}'"
            body = _fields(await api._json_body(request, what), ("version",), what)
            if "version" not in body:
                raise InvalidArgumentError(f"{what}: the request body needs 'version', e.g. {{\"version\": 2}}")
        return _json_reply(await asyncio.to_thread(traffic.set_label, model, label, body["version"],
                                                   actor=http_actor(request)))

    async def rollback(request: Request) -> Any:
        with refusals(request, "rollback"):
            model, _ = api._target(request)
            what = f"rollback of model '{model}'"
            body = _fields(await api._json_body(request, what), ("version", "label"), what)
        return _json_reply(await asyncio.to_thread(traffic.rollback, model, body.get("version"),
                                                   label=body.get("label"), actor=http_actor(request)))

    base = "/v2/models/{model}"
    return [
        route(base + "/traffic", get_policy, ["GET"], read_auth),
        route(base + "/traffic", set_policy, ["PUT"], change_auth),
        route(base + "/traffic", clear_policy, ["DELETE"], change_auth),
        route(base + "/traffic/readout", readout, ["GET"], read_auth),
        route(base + "/traffic/audit", audit, ["GET"], read_auth),
        route("/v2/traffic/audit", audit, ["GET"], read_auth),
        route(base + "/rollout", get_rollout, ["GET"], read_auth),
        route(base + "/rollout", start_rollout, ["POST"], change_auth),
        route(base + "/rollout/{action}", rollout_action, ["POST"], change_auth),
        route(base + "/labels/{label}", set_label, ["POST"], change_auth),
        route(base + "/rollback", rollback, ["POST"], change_auth),
    ]
