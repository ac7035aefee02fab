"""The floor of a Python gRPC inference server on this machine: an echo servicer with no model.

Measures nothing by itself; benchmarks start it and drive it with ``modelserve perf`` to learn
what grpc.aio plus protobuf cost per request here, the baseline that our server's per-request
overhead is compared with. It implements only what a load generator needs from
``inference.GRPCInferenceService`` (the Open Inference Protocol):

- ``ModelInfer``: answers with one output per input (``OUTPUT<i>`` for input ``i``), the same
  datatype and shape, and the request's ``raw_input_contents`` copied into
  ``raw_output_contents`` unchanged. No byte-size or shape checks: a floor does no work.
- ``ModelMetadata`` and ``ModelConfig``: describe the one model served, whose input shape,
  datatype, input count and ``max_batch_size`` come from the arguments.
- ``ServerLive``, ``ServerReady``, ``ModelReady``: always true (for the served model).

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

Importable::

    server, port = await start(0, input_shape=[256], datatype="FP32")
    ...
    await server.stop(None)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

__all__ = ["EchoServicer", "start", "main"]

# tritonclient sets its send and receive limits to INT32_MAX; the server must match (spec §0.3).
_MAX_MESSAGE_BYTES = 2**31 - 1

_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "BF16", "FP32", "FP64", "BYTES")


class EchoServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Echoes raw inputs back as outputs for one model; see the module docstring."""

    def __init__(self, model: str, input_shape: Sequence[int], datatype: str,
                 inputs: int = 1, max_batch_size: int = 0, fail_every: int = 0) -> None:
        self.model = model
        self.fail_every = fail_every
        self._count = 0
        # Metadata shapes carry a leading -1 when the model batches (spec §5, "Batching").
        shape = ([-1] if max_batch_size > 0 else []) + list(input_shape)
        names = [(f"INPUT{i}", f"OUTPUT{i}") for i in range(inputs)]
        self._metadata = service_pb2.ModelMetadataResponse(
            name=model, versions=["1"], platform="bare_echo",
            inputs=[{"name": i, "datatype": datatype, "shape": shape} for i, _ in names],
            outputs=[{"name": o, "datatype": datatype, "shape": shape} for _, o in names])
        data_type = model_config_pb2.DataType.Value(
            "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")
        self._config = service_pb2.ModelConfigResponse(config=model_config_pb2.ModelConfig(
            name=model, platform="bare_echo", backend="bare_echo", max_batch_size=max_batch_size,
            input=[{"name": i, "data_type": data_type, "dims": list(input_shape)} for i, _ in names],
            output=[{"name": o, "data_type": data_type, "dims": list(input_shape)}
                    for _, o in names]))

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

    async def ModelInfer(self, request, context):
        await self._check_model(request.model_name, context)
        if self.fail_every:
            self._count += 1
            if self._count % self.fail_every == 0:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"injected failure: request {self._count} "
                                    f"(fail_every={self.fail_every})")
        return service_pb2.ModelInferResponse(
            model_name=self.model, model_version="1", id=request.id,
            outputs=[{"name": f"OUTPUT{i}", "datatype": t.datatype, "shape": t.shape}
                     for i, t in enumerate(request.inputs)],
            raw_output_contents=request.raw_input_contents)


async def start(port: int = 0, *, host: str = "127.0.0.1", model: str = "echo",
                input_shape: Sequence[int] = (256,), datatype: str = "FP32", inputs: int = 1,
                max_batch_size: int = 0, fail_every: int = 0) -> tuple[grpc.aio.Server, int]:
    """Start the echo server on ``host:port`` (0 picks a free port) in the running event loop.

    ``input_shape`` excludes the batch dimension when ``max_batch_size > 0`` (as a model
    config's ``dims`` do); -1 marks a variable dimension. Returns the started server and the
    bound port; stop it with ``await server.stop(None)``.
    """
    if datatype not in _DATATYPES:
        raise ValueError(f"datatype {datatype!r} is not a protocol datatype; one of {_DATATYPES}")
    if inputs < 1 or max_batch_size < 0 or fail_every < 0:
        raise ValueError(f"need inputs >= 1, max_batch_size >= 0, fail_every >= 0; got "
                         f"{inputs}, {max_batch_size}, {fail_every}")
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        EchoServicer(model, input_shape, datatype, inputs, max_batch_size, fail_every), server)
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
    parser.add_argument("--model", default="echo", help="the model name served (default echo)")
    parser.add_argument("--input-shape", type=_dims, default=[256],
                        help="comma-separated dims, batch dim excluded; -1 = variable (default 256)")
    parser.add_argument("--datatype", default="FP32", choices=_DATATYPES)
    parser.add_argument("--inputs", type=int, default=1, help="number of inputs (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=0,
                        help=">0 makes the model batch: metadata shapes get a leading -1 (default 0)")
    parser.add_argument("--fail-every", type=int, default=0,
                        help="every N-th ModelInfer fails with UNAVAILABLE (default 0 = never)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        server, port = await start(args.port, host=args.host, model=args.model,
                                   input_shape=args.input_shape, datatype=args.datatype,
                                   inputs=args.inputs, max_batch_size=args.max_batch_size,
                                   fail_every=args.fail_every)
        print(port, flush=True)
        print(f"bare servicer: model {args.model!r} on {args.host}:{port}", file=sys.stderr,
              flush=True)
        await server.wait_for_termination()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
