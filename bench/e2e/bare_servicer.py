"""The floor of a Python gRPC inference server on this machine: an echo servicer with no model,
or (compute mode) a servicer that runs one model function inline.

Measures nothing by itself; benchmarks start it and drive it with ``modelserve perf`` or
tritonclient to learn what grpc.aio plus protobuf cost per request here, the baseline that our
server's per-request overhead is compared with. It implements only what a load generator needs
from ``inference.GRPCInferenceService`` (the Open Inference Protocol):

- ``ModelInfer``: answers with one output per input (``OUTPUT<i>`` for input ``i``), the same
  datatype and shape, and the request's ``raw_input_contents`` copied into
  ``raw_output_contents`` unchanged. No byte-size or shape checks: a floor does no work.
- ``ModelMetadata`` and ``ModelConfig``: describe the one model served, whose input shape,
  datatype, input count and ``max_batch_size`` come from the arguments.
- ``ServerLive``, ``ServerReady``, ``ModelReady``: always true (for the served model).

Compute mode (``compute="trivial"`` or ``"mlp"``, ``--compute``): the model is the function
``compute_models.COMPUTES[compute]`` (the same code that ``test_server_cpu.py`` serves with
modelserve's Python backend), named after it unless ``model`` says otherwise. ``ModelInfer``
decodes each ``raw_input_contents`` into a numpy array of the input's datatype and shape (a
view of the request bytes), calls the function inline on the event loop, and encodes every output
into ``raw_output_contents`` (``tobytes()``); metadata and config describe the function's tensors.
Like the echo, it checks nothing beyond the model name: what a plain Python server would do.

Every other RPC answers UNIMPLEMENTED. A request naming another model gets NOT_FOUND. For
testing clients' error paths, ``fail_every=N`` makes every N-th ``ModelInfer`` fail with
UNAVAILABLE.

gRPC's server defaults are kept, as a plain Python server would have them. One matters under
heavy open-loop load: gRPC core cancels (status CANCELLED) requests beyond
``grpc.server.max_pending_requests`` (default 1000) that wait for the Python handler, which a
load generator then counts as errors.

It is built on tritonclient's own generated stubs (``tritonclient.grpc.service_pb2``
and ``service_pb2_grpc``), so the floor does not depend on modelserve's code.

Standalone (prints the bound port alone on stdout, then serves until interrupted)::

    python bench/e2e/bare_servicer.py --port 0 --input-shape 256 --datatype FP32
    python bench/e2e/bare_servicer.py --port 0 --compute mlp --max-batch-size 64

Importable::

    server, port = await start(0, input_shape=[256], datatype="FP32")
    ...
    await server.stop(None)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

__all__ = ["ComputeServicer", "EchoServicer", "start", "main"]

# tritonclient sets its send and receive limits to INT32_MAX; the server must match (spec §0.3).
_MAX_MESSAGE_BYTES = 2**31 - 1

_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "BF16", "FP32", "FP64", "BYTES")


Tensors = Sequence[tuple[str, str, Sequence[int]]]  # (name, datatype, dims without the batch)


def _describe(model: str, platform: str, max_batch_size: int, inputs: Tensors,
              outputs: Tensors) -> tuple[service_pb2.ModelMetadataResponse,
                                         service_pb2.ModelConfigResponse]:
    """The metadata and config responses of a model with these tensors."""
    # Metadata shapes carry a leading -1 when the model batches (spec §5, "Batching").
    batch = [-1] if max_batch_size > 0 else []

    def meta(tensors: Tensors) -> list[dict]:
        return [{"name": n, "datatype": d, "shape": batch + list(s)} for n, d, s in tensors]

    def conf(tensors: Tensors) -> list[dict]:
        return [{"name": n, "dims": list(s), "data_type": model_config_pb2.DataType.Value(
            "TYPE_STRING" if d == "BYTES" else f"TYPE_{d}")} for n, d, s in tensors]

    metadata = service_pb2.ModelMetadataResponse(name=model, versions=["1"], platform=platform,
                                                 inputs=meta(inputs), outputs=meta(outputs))
    config = service_pb2.ModelConfigResponse(config=model_config_pb2.ModelConfig(
        name=model, platform=platform, backend=platform, max_batch_size=max_batch_size,
        input=conf(inputs), output=conf(outputs)))
    return metadata, config


class EchoServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Echoes raw inputs back as outputs for one model; see the module docstring."""

    def __init__(self, model: str, input_shape: Sequence[int], datatype: str,
                 inputs: int = 1, max_batch_size: int = 0, fail_every: int = 0) -> None:
        self.model = model
        self.fail_every = fail_every
        self._count = 0
        self._metadata, self._config = _describe(
            model, "bare_echo", max_batch_size,
            [(f"INPUT{i}", datatype, input_shape) for i in range(inputs)],
            [(f"OUTPUT{i}", datatype, input_shape) for i in range(inputs)])

    async def _check_model(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name != self.model:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"Request for unknown model: '{name}' is not found "
                                f"(this bare servicer serves only '{self.model}')")

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == self.model)

    async def ModelMetadata(self, request, context):
        await self._check_model(request.name, context)
        return self._metadata

    async def ModelConfig(self, request, context):
        await self._check_model(request.name, context)
        return self._config

    async def _maybe_fail(self, context):
        """Every fail_every-th request is refused with UNAVAILABLE (when fail_every is set)."""
        if self.fail_every:
            self._count += 1
            if self._count % self.fail_every == 0:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"injected failure: request {self._count} "
                                    f"(fail_every={self.fail_every})")

    async def ModelInfer(self, request, context):
        await self._check_model(request.model_name, context)
        await self._maybe_fail(context)
        return service_pb2.ModelInferResponse(
            model_name=self.model, model_version="1", id=request.id,
            outputs=[{"name": f"OUTPUT{i}", "datatype": t.datatype, "shape": t.shape}
                     for i, t in enumerate(request.inputs)],
            raw_output_contents=request.raw_input_contents)


# numpy dtypes of the datatypes a compute function may take (BYTES is not decoded here).
_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_DATATYPE_OF = {np.dtype(t).str[1:]: name for name, t in _NUMPY.items()}  # "f4" -> "FP32"


def _compute_models() -> ModuleType:
    """``compute_models.py`` beside this file, however this file was loaded (as part of the
    ``bench.e2e`` package, as a script, or from its path as tests/test_perf.py does)."""
    if __package__:
        from . import compute_models
        return compute_models
    path = Path(__file__).resolve().with_name("compute_models.py")
    spec = importlib.util.spec_from_file_location("compute_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ComputeServicer(EchoServicer):
    """Serves one function of ``compute_models.COMPUTES``: decode, call it inline, encode; see
    the module docstring."""

    def __init__(self, compute: str, model: str | None = None, max_batch_size: int = 0,
                 fail_every: int = 0) -> None:
        computes = _compute_models().COMPUTES
        if compute not in computes:
            raise ValueError(f"compute {compute!r} is not one of {sorted(computes)}")
        spec = computes[compute]
        self.model = model or spec.name
        self.fail_every = fail_every
        self._count = 0
        self._function = spec.function
        self._metadata, self._config = _describe(self.model, "bare_compute", max_batch_size,
                                                 spec.inputs, spec.outputs)

    async def ModelInfer(self, request, context):
        await self._check_model(request.model_name, context)
        await self._maybe_fail(context)
        inputs = {t.name: np.frombuffer(raw, _NUMPY[t.datatype]).reshape(tuple(t.shape))
                  for t, raw in zip(request.inputs, request.raw_input_contents)}
        outputs = self._function(inputs)
        response = service_pb2.ModelInferResponse(model_name=self.model, model_version="1",
                                                  id=request.id)
        for name, a in outputs.items():
            response.outputs.add(name=name, datatype=_DATATYPE_OF[a.dtype.str[1:]],
                                 shape=a.shape)
            response.raw_output_contents.append(a.tobytes())
        return response


async def start(port: int = 0, *, host: str = "127.0.0.1", model: str | None = None,
                input_shape: Sequence[int] = (256,), datatype: str = "FP32", inputs: int = 1,
                max_batch_size: int = 0, fail_every: int = 0,
                compute: str | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the echo server on ``host:port`` (0 picks a free port) in the running event loop.

    ``input_shape`` excludes the batch dimension when ``max_batch_size > 0`` (as a model
    config's ``dims`` do); -1 marks a variable dimension. ``model`` defaults to "echo". With
    ``compute`` (a name of ``compute_models.COMPUTES``) it serves that function instead of the
    echo, named ``model`` or else after the function; ``input_shape``, ``datatype`` and
    ``inputs`` are then the function's own and ignored. Returns the started server and the
    bound port; stop it with ``await server.stop(None)``.
    """
    if datatype not in _DATATYPES:
        raise ValueError(f"datatype {datatype!r} is not a protocol datatype; one of {_DATATYPES}")
    if inputs < 1 or max_batch_size < 0 or fail_every < 0:
        raise ValueError(f"need inputs >= 1, max_batch_size >= 0, fail_every >= 0; got "
                         f"{inputs}, {max_batch_size}, {fail_every}")
    servicer = (ComputeServicer(compute, model, max_batch_size, fail_every) if compute else
                EchoServicer(model or "echo", input_shape, datatype, inputs, max_batch_size,
                             fail_every))
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    await server.start()
    return server, bound


def _dims(text: str) -> list[int]:
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    if any(d < -1 or d == 0 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: dimensions are positive, or -1 for variable")
    return dims


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (default 8001)")
    parser.add_argument("--model", help="the model name served (default echo, or the compute's "
                                        "name with --compute)")
    parser.add_argument("--compute", choices=("trivial", "mlp"),
                        help="serve this function of compute_models.py (decode, run it inline, "
                             "encode) instead of the echo; its tensors are its own")
    parser.add_argument("--input-shape", type=_dims,
                        help="echo only: comma-separated dims, batch dim excluded; -1 = variable "
                             "(default 256)")
    parser.add_argument("--datatype", choices=_DATATYPES, help="echo only (default FP32)")
    parser.add_argument("--inputs", type=int, help="echo only: number of inputs (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=0,
                        help=">0 makes the model batch: metadata shapes get a leading -1 (default 0)")
    parser.add_argument("--fail-every", type=int, default=0,
                        help="every N-th ModelInfer fails with UNAVAILABLE (default 0 = never)")
    args = parser.parse_args(argv)
    echo_only = {"--input-shape": args.input_shape, "--datatype": args.datatype,
                 "--inputs": args.inputs}
    if args.compute and any(v is not None for v in echo_only.values()):
        given = [flag for flag, v in echo_only.items() if v is not None]
        parser.error(f"{', '.join(given)}: the echo's options; --compute {args.compute} serves "
                     "the function's own tensors")
    model = args.model or args.compute or "echo"

    async def serve() -> None:
        server, port = await start(
            args.port, host=args.host, model=model,
            input_shape=args.input_shape or [256], datatype=args.datatype or "FP32",
            inputs=args.inputs if args.inputs is not None else 1,
            max_batch_size=args.max_batch_size, fail_every=args.fail_every,
            compute=args.compute)
        print(port, flush=True)
        kind = f"compute {args.compute!r}" if args.compute else "echo"
        print(f"bare servicer ({kind}): model {model!r} on {args.host}:{port}", file=sys.stderr,
              flush=True)
        await server.wait_for_termination()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
