"""OpenAI-compatible routes for generative models, on the HTTP port: ``GET /v1/models``,
``POST /v1/completions`` and ``POST /v1/chat/completions``, streamed (server-sent events) or not.

The unmodified ``openai`` client works against them (tests/test_openai.py). ``model`` is a model
name, or ``name:version`` / ``name:label`` for one version. Supported fields: ``prompt`` (a
string), ``messages``, ``max_tokens`` (``max_completion_tokens``), ``temperature``, ``top_p``,
``seed``, ``stop``, ``stream``, ``stream_options.include_usage``, ``user``, ``logprobs`` (the
chosen tokens' log-probabilities), and the extensions ``top_k``, ``min_tokens`` and
``ignore_eos``. A field that would change the output and is not supported (``n`` > 1, ``echo``,
``best_of``, ``logit_bias``, ``tools``, penalties, ...) is refused with 400 naming it. Errors have
OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import InvalidArgumentError, ModelserveError, NotFoundError
from ..generation import SamplingParams

__all__ = ["openai_routes", "generate_routes", "sampling_params", "FieldError"]

log = logging.getLogger("modelserve.http")

# Fields that change what the model answers, which modelserve does not implement: refused, never
# ignored. (Their neutral values pass.)
_UNSUPPORTED = {
    "n": 1, "best_of": 1, "echo": False, "logit_bias": None, "suffix": None, "tools": None, "tool_choice": None,
    "functions": None, "function_call": None, "response_format": None, "frequency_penalty": 0,
    "presence_penalty": 0, "top_logprobs": 0, "prediction": None, "audio": None, "modalities": None,
}


class FieldError(Exception):
    """A request field the generate routes refuse: its HTTP status, the field and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = _TYPES.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _endpoint(handler: Callable[[Request], Any], check: Callable[[Request], None] | None) -> Callable:
    async def endpoint(request: Request) -> Response:
        try:
            if check is not None:
                check(request)
            return await handler(request)
        except FieldError as e:
            return _error(e.status, str(e), e.param, e.code)
        except NotFoundError as e:
            return _error(404, str(e), "model", "model_not_found")
        except ModelserveError as e:
            if e.http_status == 500:
                log.warning("%s %s: %s", request.method, request.url.path, e)
            return _error(e.http_status, str(e))
        except ClientDisconnect:
            return _error(499, "the client disconnected")
        except Exception as e:  # a bug: answer, log, keep serving
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(500, f"internal error: {type(e).__name__}: {e}")

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def _model_and_version(value: Any) -> tuple[str, int | str | None]:
    if not isinstance(value, str) or not value:
        raise FieldError(400, "'model' must be a model name (name, name:version or name:label)", "model")
    name, sep, which = value.rpartition(":")
    if not sep:
        return value, None
    return name, int(which) if which.isdigit() else which


def _get(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise FieldError(400, f"'{key}' must be a number, got {value!r}", key)
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise FieldError(400, f"'{key}' must be {name}, got {value!r}", key)
    return value


def sampling_params(body: dict[str, Any], default_max_tokens: int | None, chat: bool) -> tuple[SamplingParams, bool]:
    """The request's SamplingParams, and whether it wants log-probabilities."""
    for key, neutral in _UNSUPPORTED.items():
        if key in body and body[key] not in (neutral, None) and body[key] != {} and body[key] != []:
            raise FieldError(400, f"'{key}' is not supported by modelserve (got {body[key]!r})", key)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)) or len(stop) > 4:
        raise FieldError(400, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise FieldError(400, f"'{key}' must be an integer > 0, got {max_tokens!r}", key)
    if chat:
        logprobs = bool(_get(body, "logprobs", bool, False))
    else:
        n = _get(body, "logprobs", int, None)
        if n not in (None, 0):
            raise FieldError(400, f"'logprobs' must be 0 (the chosen tokens' log-probabilities; alternatives are "
                               f"not supported), got {n!r}", "logprobs")
        logprobs = n == 0
    seed = _get(body, "seed", int, None)
    try:
        params = SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else 16,
            temperature=float(_get(body, "temperature", (int, float), 1.0)),
            top_p=float(_get(body, "top_p", (int, float), 1.0)),
            top_k=_get(body, "top_k", int, 0),
            min_tokens=_get(body, "min_tokens", int, 0),
            ignore_eos=bool(_get(body, "ignore_eos", bool, False)),
            seed=seed, stop=tuple(stop), logprobs=logprobs)
    except TypeError as e:
        raise FieldError(400, str(e)) from None
    return params, logprobs


def _param_of(message: str) -> str | None:
    """The field a sampling error names ("sampling parameter 'top_p' must be ...")."""
    if "'" in message:
        name = message.split("'")[1]
        return name if name.isidentifier() else None
    return None


class _OpenAI:
    def __init__(self, runtime: Any, json_body: Callable[[Request, str], Any]) -> None:
        self.runtime = runtime
        self.json_body = json_body

    async def models(self, request: Request) -> Response:
        data = []
        for m in self.runtime.generative_models():
            data.append({"id": m["name"], "object": "model", "created": m["created"], "owned_by": "modelserve"})
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        route = "/v1/chat/completions" if chat else "/v1/completions"
        body = await self.json_body(request, route)
        name, version = _model_and_version(body.get("model"))
        engine = self._engine(name, version)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise FieldError(400, "'messages' must be a non-empty list of {role, content}", "messages")
            try:
                prompt = engine.apply_chat_template(messages)
            except InvalidArgumentError as e:
                raise FieldError(400, str(e), "messages") from None
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise FieldError(400, "'prompt' must be a non-empty string", "prompt")
        if engine.tokenizer is None:
            raise FieldError(400, f"model '{name}' has no tokenizer.json, so it cannot take text", "model")
        prompt_ids = engine.tokenizer.encode(prompt).ids  # once: the engine takes the ids
        prompt_len = len(prompt_ids)
        room = engine.max_model_len - prompt_len
        if room < 1:
            raise FieldError(400, f"the prompt has {prompt_len} tokens; the model's context is "
                               f"{engine.max_model_len} tokens (prompt and output together)",
                               "messages" if chat else "prompt", "context_length_exceeded")
        params, logprobs = sampling_params(body, room if chat else min(16, room), chat)
        if params.max_tokens > room:
            key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            raise FieldError(400, f"'{key}' {params.max_tokens} and the prompt's {prompt_len} tokens exceed the "
                               f"model's context of {engine.max_model_len} tokens", key, "context_length_exceeded")
        watch = _watch(self.runtime, request, f"POST {route}", name)
        if watch is not None:
            watch.prompt = prompt  # the text, not the ids the engine takes
        try:
            user = body.get("user")
            handle = self.runtime.submit_generation(name, prompt_ids, params, version=version,
                                                    routing={"user": user} if isinstance(user, str) else None,
                                                    watch=watch)
        except InvalidArgumentError as e:
            raise FieldError(400, str(e), _param_of(str(e))) from None
        model = body["model"]
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if body.get("stream"):
            return StreamingResponse(self._events(handle, engine, rid, model, created, chat, logprobs, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            text, tokens, lps, reason = "", [], [], None
            async for delta in handle.deltas_async(coalesce=True):
                text += delta.text
                tokens += delta.token_ids
                lps += delta.logprobs or []
                reason = delta.finish_reason or reason
        finally:
            if not handle.finished:  # the client went away (the handler was cancelled)
                handle.cancel()
        usage = {"prompt_tokens": prompt_len, "completion_tokens": len(tokens),
                 "total_tokens": prompt_len + len(tokens)}
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason,
                                  "logprobs": self._logprobs(engine, tokens, lps, chat) if logprobs else None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": created, "model": model, "choices": [choice], "usage": usage})

    def _engine(self, name: str, version: int | str | None) -> Any:
        mv = self.runtime.repository.get(name).lookup(version)
        if mv.generator is None:
            raise FieldError(400, f"{mv.label} is not a generative model (backend '{mv.backend_name}')", "model")
        return mv.generator

    @staticmethod
    def _logprobs(engine: Any, tokens: list[int], lps: list[float], chat: bool) -> Any:
        texts = [engine.tokenizer.decode([t]) for t in tokens]
        if chat:
            return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()), "top_logprobs": []}
                                for s, lp in zip(texts, lps)]}
        return {"tokens": texts, "token_logprobs": lps, "top_logprobs": None, "text_offset": None}

    async def _events(self, handle: Any, engine: Any, rid: str, model: str, created: int, chat: bool,
                      logprobs: bool, include_usage: bool) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            chunk: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
            if include_usage:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        generated = 0
        try:
            if chat:
                yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None}])
            async for delta in handle.deltas_async(coalesce=True):
                generated += len(delta.token_ids)
                if not delta.text and delta.finish_reason is None:
                    continue  # held back (a possible stop string) or a token with no text yet
                lp = self._logprobs(engine, delta.token_ids, delta.logprobs or [], chat) if logprobs else None
                choice: dict[str, Any] = {"index": 0, "finish_reason": delta.finish_reason, "logprobs": lp}
                if chat:
                    choice["delta"] = {"content": delta.text} if delta.text else {}
                else:
                    choice["text"] = delta.text
                yield event([choice])
            if include_usage:
                prompt = len(handle.prompt_ids)
                yield event([], {"prompt_tokens": prompt, "completion_tokens": generated,
                                 "total_tokens": prompt + generated})
            yield b"data: [DONE]\n\n"
        finally:  # a client that disconnects mid-stream ends this generator: free the sequence
            if not handle.finished:
                handle.cancel()


def _watch(runtime: Any, request: Request, name: str, model: str) -> Any:
    """The request's watch (modelserve.observe) when tracing or payload logging is on, else None."""
    observer = runtime.observer
    return observer.watch("http", name, model, request.headers.get) if observer.active else None


# --- Triton's generate extension -------------------------------------------------------------------

class _Generate:
    """``POST /v2/models/{m}[/versions/{v}]/generate`` and ``/generate_stream`` (Triton's generate
    extension): ``text_input`` in, ``text_output`` out, sampling parameters as fields (the
    OpenAI route's names: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``,
    ``stop``, ``min_tokens``, ``ignore_eos``); errors in the Open Inference Protocol's shape."""

    def __init__(self, runtime: Any, json_body: Callable[[Request, str], Any]) -> None:
        self.runtime = runtime
        self.json_body = json_body

    async def _start(self, request: Request) -> tuple[Any, dict[str, Any], str, Any]:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        what = f"model '{name}'" + (f" version {version}" if version else "")
        body = await self.json_body(request, what)
        text = body.get("text_input")
        if not isinstance(text, str) or not text:
            raise InvalidArgumentError(f"{what}: 'text_input' must be a non-empty string")
        fields = {k: v for k, v in body.items() if k not in ("text_input", "parameters", "id")}
        fields.update(body.get("parameters") or {})
        try:
            params, _ = sampling_params(fields, 16, chat=False)
        except FieldError as e:
            raise InvalidArgumentError(f"{what}: {e}") from None
        which = (int(version) if version.isdigit() else version) if version else None
        mv = self.runtime.repository.get(name).lookup(which)
        stream = request.url.path.endswith("_stream")
        watch = _watch(self.runtime, request, f"POST /v2/models/{name}/generate{'_stream' if stream else ''}", name)
        handle = self.runtime.submit_generation(name, text, params, version=mv.version, watch=watch)
        return handle, {"model_name": name, "model_version": str(mv.version)}, what, mv

    async def generate(self, request: Request) -> Response:
        handle, head, _, _ = await self._start(request)
        text = ""
        try:
            async for delta in handle.deltas_async(coalesce=True):
                text += delta.text
        finally:
            if not handle.finished:
                handle.cancel()
        return JSONResponse({**head, "text_output": text})

    async def generate_stream(self, request: Request) -> Response:
        handle, head, _, _ = await self._start(request)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for delta in handle.deltas_async(coalesce=True):
                    if delta.text or delta.finish_reason is not None:
                        yield b"data: " + json.dumps({**head, "text_output": delta.text}).encode() + b"\n\n"
            except ModelserveError as e:
                yield b"data: " + json.dumps({"error": str(e)}).encode() + b"\n\n"
            finally:
                if not handle.finished:
                    handle.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def generate_routes(runtime: Any, json_body: Callable[[Request, str], Any], route: Callable[..., Route],
                    check: Callable[[Request], None] | None) -> list[Route]:
    """Triton's generate extension; ``route`` wraps handlers with the /v2 error replies."""
    api = _Generate(runtime, json_body)
    routes = []
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [route(base + "/generate", api.generate, ["POST"], check),
                   route(base + "/generate_stream", api.generate_stream, ["POST"], check)]
    return routes


def openai_routes(runtime: Any, json_body: Callable[[Request, str], Any],
                  check: Callable[[Request], None] | None) -> list[Route]:
    """The ``/v1`` routes; ``check`` authorises a request (the inference token as Bearer)."""
    api = _OpenAI(runtime, json_body)
    return [
        Route("/v1/models", _endpoint(api.models, check), methods=["GET"]),
        Route("/v1/completions", _endpoint(api.completions, check), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint(api.chat_completions, check), methods=["POST"]),
    ]
