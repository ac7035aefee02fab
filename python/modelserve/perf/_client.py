"""The two transports, over tritonclient's asyncio clients (any Open Inference Protocol server).

A transport reads the model's metadata and config, turns payloads into prepared requests once
(``prepare``; tritonclient serializes a tensor when it is set), and sends a prepared request
(``infer``), raising on any failure. tritonclient is imported here, lazily, so that
``modelserve perf --help`` and option errors do not pay for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np

from ._model import ModelInfo, SetupError, TensorMetadata

__all__ = ["Transport", "GrpcTransport", "HttpTransport", "open_transport", "describe_error", "require_tritonclient"]


def require_tritonclient(protocol: str) -> None:
    """Fail before the run, with the install command, when tritonclient's client for
    ``protocol`` (or what it needs: grpcio, aiohttp) is not installed."""
    try:
        importlib.import_module(f"tritonclient.{protocol}.aio")
    except ImportError as e:
        raise ImportError(
            f"--protocol {protocol} needs tritonclient's {protocol} client, which is not installed "
            f"({e.name or e}): pip install 'tritonclient[{protocol}]'"
        ) from e


def describe_error(e: BaseException) -> str:
    """One line for an error: tritonclient's message, else the exception's type and text."""
    text = " ".join(str(e).split())
    if type(e).__name__ == "InferenceServerException" and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _tensors(items) -> tuple[TensorMetadata, ...]:
    return tuple(TensorMetadata(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
                 for t in items)


class Transport:
    """One client connection, shared by every request of a run."""

    protocol = ""

    def __init__(self, url: str, model: str, version: str, timeout: float) -> None:
        self.url, self.model, self.version, self.timeout = url, model, version, timeout
        self.outputs: tuple[TensorMetadata, ...] = ()

    async def model_info(self) -> ModelInfo:
        target = f"model {self.model!r}" + (f" version {self.version}" if self.version else "")
        try:
            metadata = await self._metadata()
        except Exception as e:
            raise SetupError(f"cannot read the metadata of {target} from {self.url} over "
                             f"{self.protocol}: {describe_error(e)}") from e
        try:
            max_batch_size = await self._max_batch_size()
        except Exception:
            max_batch_size = None  # the model configuration extension is optional
        info = ModelInfo(name=metadata.get("name", self.model),
                         versions=tuple(metadata.get("versions", ())),
                         platform=metadata.get("platform", ""),
                         inputs=_tensors(metadata.get("inputs", ())),
                         outputs=_tensors(metadata.get("outputs", ())),
                         max_batch_size=max_batch_size)
        self.outputs = info.outputs
        return info

    async def _metadata(self) -> dict: ...
    async def _max_batch_size(self) -> int: ...
    def prepare(self, payload: dict[str, np.ndarray], inputs: Sequence[TensorMetadata]): ...
    async def infer(self, prepared) -> None: ...
    async def close(self) -> None: ...


class GrpcTransport(Transport):
    protocol = "grpc"

    def __init__(self, url: str, model: str, version: str, timeout: float) -> None:
        super().__init__(url, model, version, timeout)
        import tritonclient.grpc.aio as grpcclient

        self._module = grpcclient
        self._client = grpcclient.InferenceServerClient(url)

    async def _metadata(self) -> dict:
        m = await self._client.get_model_metadata(self.model, self.version, client_timeout=self.timeout)
        tensors = lambda ts: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}  # noqa: E731
                              for t in ts]
        return {"name": m.name, "versions": list(m.versions), "platform": m.platform,
                "inputs": tensors(m.inputs), "outputs": tensors(m.outputs)}

    async def _max_batch_size(self) -> int:
        c = await self._client.get_model_config(self.model, self.version, client_timeout=self.timeout)
        return int(c.config.max_batch_size)

    def prepare(self, payload, inputs):
        prepared = []
        for t in inputs:
            array = payload[t.name]
            tensor = self._module.InferInput(t.name, list(array.shape), t.datatype)
            tensor.set_data_from_numpy(array)
            prepared.append(tensor)
        return prepared

    async def infer(self, prepared) -> None:
        await self._client.infer(self.model, prepared, model_version=self.version,
                                 client_timeout=self.timeout)

    async def close(self) -> None:
        await self._client.close()


class HttpTransport(Transport):
    protocol = "http"

    def __init__(self, url: str, model: str, version: str, timeout: float, *, binary: bool,
                 connections: int) -> None:
        super().__init__(url, model, version, timeout)
        import tritonclient.http.aio as httpclient

        self._module = httpclient
        self.binary = binary
        # One connection per outstanding request, so that requests never queue in the client's
        # pool (that wait would be counted as server latency). The session's total timeout is
        # the per-request timeout.
        self._client = httpclient.InferenceServerClient(url, conn_limit=connections,
                                                        conn_timeout=timeout)

    async def _metadata(self) -> dict:
        return await self._client.get_model_metadata(self.model, self.version)

    async def _max_batch_size(self) -> int:
        config = await self._client.get_model_config(self.model, self.version)
        # Protobuf's JSON form may leave out a field at its default, and 0 is max_batch_size's.
        return int(config.get("max_batch_size", 0))

    def prepare(self, payload, inputs):
        tensors = []
        for t in inputs:
            array = payload[t.name]
            tensor = self._module.InferInput(t.name, list(array.shape), t.datatype)
            tensor.set_data_from_numpy(array, binary_data=self.binary)
            tensors.append(tensor)
        # Binary: asking for no outputs gets every output, in binary (the client then sets
        # binary_data_output). JSON: every output must be named to ask for it as JSON.
        outputs = None if self.binary else [
            self._module.InferRequestedOutput(o.name, binary_data=False) for o in self.outputs]
        return tensors, outputs or None

    async def infer(self, prepared) -> None:
        tensors, outputs = prepared
        await self._client.infer(self.model, tensors, model_version=self.version, outputs=outputs)

    async def close(self) -> None:
        await self._client.close()


def open_transport(protocol: str, url: str, model: str, version: str, timeout: float, *,
                   binary: bool = True, connections: int = 1) -> Transport:
    """A transport for ``protocol``; call inside the event loop that will use it."""
    if protocol == "grpc":
        return GrpcTransport(url, model, version, timeout)
    return HttpTransport(url, model, version, timeout, binary=binary, connections=connections)
