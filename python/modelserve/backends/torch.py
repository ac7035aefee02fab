"""The ``torch`` backend: ``<version>/model.pt``, a TorchScript module (``torch.jit.save``) run by
PyTorch (``pip install 'modelserve[torch]'``).

The module is called with the inputs as positional tensors, in the order of config.yaml's
``inputs`` (in the order of the request's inputs when config.yaml lists none), under
``torch.inference_mode()``. It may return a tensor, a tuple or list of tensors, or a dict of
tensors: a dict's keys name the outputs; otherwise they take the names of config.yaml's
``outputs`` in order (``OUTPUT0``, ``OUTPUT1``, ... when it lists none), and a count that differs
from config.yaml's raises. TorchScript records no signature, so :meth:`TorchBackend.signature`
returns None and config.yaml must declare the inputs and outputs.

Inputs are viewed with ``torch.from_numpy`` (no copy) unless the array is read-only, which is
copied (torch tensors are always writable). BF16 inputs may arrive as ``ml_dtypes.bfloat16`` or as
their ``uint16`` bits (an input config.yaml declares BF16); both are reinterpreted as
``torch.bfloat16`` without a copy. BF16 outputs are returned as ``ml_dtypes.bfloat16`` arrays when
ml_dtypes is installed and as ``uint16`` bits otherwise. BYTES has no tensor type: a config
declaring a BYTES input or output fails the load.

Devices: on ``cuda:N`` (when ``torch.cuda.is_available()``; otherwise the CPU, with a warning in
the log) the module is loaded with ``map_location="cuda:N"`` and each instance runs its batches on
its own ``torch.cuda.Stream``, synchronised before the outputs are returned.

Threads: ``parameters: {num_threads: N}`` calls ``torch.set_num_threads(N)`` at load. PyTorch's
intra-op pool is process-wide, so this affects every torch model in the process (the last load
wins); without the parameter PyTorch's default (one thread per physical core) is left alone.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from ..errors import InternalError, InvalidArgumentError
from .base import Backend, MissingExtraError, register

__all__ = ["TorchBackend"]

_log = logging.getLogger(__name__)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingExtraError("torch", "torch", "torch") from None
    return torch


def _bfloat16_numpy() -> Any:
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


@register
class TorchBackend(Backend):
    name = "torch"
    model_file = "model.pt"

    module: Any = None

    def load(self) -> None:
        ctx = self.context
        cfg = ctx.config
        path = ctx.version_dir / self.model_file
        strings = [t.name for t in cfg.inputs + cfg.outputs if t.datatype == "BYTES"]
        if strings:
            raise InvalidArgumentError(
                f"{ctx.label}: {', '.join(repr(n) for n in strings)} declared BYTES, which TorchScript "
                "tensors cannot hold; use the python backend for models that take or return strings"
            )
        torch = _torch()
        self._torch = torch

        threads = ctx.parameters.get("num_threads")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InvalidArgumentError(
                    f"{ctx.label}: parameters.num_threads: expected an integer >= 1, got {threads!r}"
                )
            torch.set_num_threads(threads)

        device = "cpu"
        if ctx.device.startswith("cuda"):
            if torch.cuda.is_available():
                device = ctx.device
            else:
                _log.warning(
                    "%s instance %d: device %s requested but torch.cuda.is_available() is False; "
                    "running on the CPU", ctx.label, ctx.instance, ctx.device,
                )
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

        if not path.is_file():
            raise InvalidArgumentError(f"{path}: no such model file")
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript itself; serving a saved model.pt is what this
                # backend is for, so the warning would only repeat on every load.
                warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=self.device)
        except Exception as e:  # not TorchScript, saved by a newer torch, ...
            raise InvalidArgumentError(f"{path}: torch.jit.load cannot load the model: {e}") from e
        self.module = module.eval()

        self._input_names = [t.name for t in cfg.inputs]
        self._bf16_inputs = {t.name for t in cfg.inputs if t.datatype == "BF16"}
        self._output_names = [t.name for t in cfg.outputs]
        self._bf16_numpy = _bfloat16_numpy()

    def _to_tensor(self, name: str, array: np.ndarray) -> Any:
        torch = self._torch
        array = np.asarray(array)
        if not array.flags.writeable or any(s < 0 for s in array.strides):
            array = np.array(array, copy=True, order="C")
        bf16 = array.dtype.name == "bfloat16" or (name in self._bf16_inputs and array.dtype == np.uint16)
        if bf16:
            tensor = torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        else:
            try:
                tensor = torch.from_numpy(array)
            except TypeError as e:
                raise InvalidArgumentError(f"{self.context.label}: input '{name}': {e}") from None
        if self.device.type != "cpu":
            tensor = tensor.to(self.device, non_blocking=True)
        return tensor

    def _to_numpy(self, name: str, tensor: Any) -> np.ndarray:
        torch = self._torch
        if not isinstance(tensor, torch.Tensor):
            raise InternalError(
                f"{self.context.label}: output '{name}' is a {type(tensor).__name__}, not a tensor"
            )
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            bits = tensor.view(torch.int16).numpy().view(np.uint16)
            return bits.view(self._bf16_numpy) if self._bf16_numpy is not None else bits
        return tensor.numpy()

    def _name(self, result: Any) -> dict[str, Any]:
        if isinstance(result, dict):
            return {str(k): v for k, v in result.items()}
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        names = self._output_names or [f"OUTPUT{i}" for i in range(len(values))]
        if len(values) != len(names):
            raise InternalError(
                f"{self.context.label}: the model returned {len(values)} output(s) but config.yaml declares "
                f"{len(names)} ({', '.join(names)})"
            )
        return dict(zip(names, values))

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.module is None:
            raise InvalidArgumentError(f"{self.context.label}: execute() before load()")
        torch = self._torch
        names = self._input_names or list(inputs)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InvalidArgumentError(f"{self.context.label}: missing input(s) {', '.join(missing)}")
        if self.stream is None:
            with torch.inference_mode():
                args = [self._to_tensor(n, inputs[n]) for n in names]
                result = self.module(*args)
                return {k: self._to_numpy(k, v) for k, v in self._name(result).items()}
        with torch.cuda.stream(self.stream), torch.inference_mode():
            args = [self._to_tensor(n, inputs[n]) for n in names]
            result = self.module(*args)
            outputs = {k: self._to_numpy(k, v) for k, v in self._name(result).items()}
        self.stream.synchronize()
        return outputs

    def unload(self) -> None:
        self.module = None
        self.stream = None

    @classmethod
    def signature(cls, version_dir, config):  # noqa: ANN001 - see Backend.signature
        """TorchScript records no usable signature: config.yaml declares inputs and outputs."""
        return None
