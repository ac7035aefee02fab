"""HTTP routes of modelserve's own (outside the Open Inference Protocol's ``/v2``): a serving
version's runtime settings (modelserve/settings.py).

::

    GET   /modelserve/v1/models/{model}/status                      Runtime.model_versions: the default
          version, labels, every version's state, reason, history and input drift
    GET   /modelserve/v1/models/{model}/settings                    the default version's
    GET   /modelserve/v1/models/{model}/versions/{version}/settings
    PATCH /modelserve/v1/models/{model}[/versions/{version}]/settings
          {"instances": {"count": 2, "min": 1, "max": 4},
           "dynamic_batching": {"max_queue_size": 64, "max_queue_delay_us": 200}}

Both answer the settings as they are after the call (JSON). PATCH needs the admin token when the
server has one (like repository load/unload). Errors use the shared table (400 for a bad key or
value, 404 for an unknown model or version, 429 when the memory budget refuses more instances).
A PATCH is audited (action ``settings``) by the runtime; a body refused here, before the runtime
is called, is recorded as its failure; the actor is the ``X-Modelserve-Actor`` header, else
``http:<client address>`` (common.py, Note [Audit actor]).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidArgumentError
from .common import http_actor
from .runtime_api import ServingRuntime

__all__ = ["SETTINGS_PREFIX", "settings_routes"]

SETTINGS_PREFIX = "/modelserve/v1/models/{model}"


def _json(value: Any) -> Response:
    return Response(json.dumps(value), media_type="application/json")


def settings_routes(runtime: ServingRuntime) -> list[tuple[str, Callable[[Request], Any], list[str]]]:
    """(path, handler, methods) for the settings routes over ``runtime``; the HTTP frontend adds
    authorisation and its error replies."""

    def target(request: Request) -> tuple[str, str | None]:
        return request.path_params["model"], request.path_params.get("version")

    async def get(request: Request) -> Response:
        model, version = target(request)
        return _json(runtime.settings(model, version))

    async def patch(request: Request) -> Response:
        model, version = target(request)
        actor = http_actor(request)
        what = f"settings of model '{model}'" + (f" version {version}" if version else "")
        with runtime.traffic.refusals(actor, "settings", model):
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError as e:
                raise InvalidArgumentError(f"{what}: the body is not valid JSON: {e}") from None
            if not isinstance(body, dict):
                raise InvalidArgumentError(f"{what}: the body must be a JSON object")
            unknown = sorted(set(body) - {"instances", "dynamic_batching"})
            if unknown:
                raise InvalidArgumentError(
                    f"{what}: unknown section(s) {unknown}; expected instances, dynamic_batching")
            for section in ("instances", "dynamic_batching"):
                if not isinstance(body.get(section, {}), dict):
                    raise InvalidArgumentError(f"{what}: '{section}' must be a JSON object")
        # Scaling waits for instances to start or finish their batches: off the event loop.
        result = await asyncio.to_thread(
            runtime.update_settings, model, version,
            instances=body.get("instances"), dynamic_batching=body.get("dynamic_batching"), actor=actor,
        )
        return _json(result)

    async def status(request: Request) -> Response:
        model, _ = target(request)
        return _json(runtime.model_versions(model))

    out = [(SETTINGS_PREFIX + "/status", status, ["GET"])]
    for base in (SETTINGS_PREFIX, SETTINGS_PREFIX + "/versions/{version}"):
        out.append((base + "/settings", get, ["GET"]))
        out.append((base + "/settings", patch, ["PATCH"]))
    return out
