"""The ``python`` backend: ``<version>/model.py`` defines ``class Model`` (DESIGN.md)::

    class Model:
        def load(self, context): ...      # optional; context.config, .version_dir, .device
        def execute(self, inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]: ...
        def unload(self): ...             # optional

The module is imported once per version folder; each instance gets its own ``Model()``.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import InvalidArgumentError
from .base import Backend, register

# Keyed by path and file stamp, so a model.py rewritten in place is imported afresh.
_modules: dict[tuple[Path, int, int], ModuleType] = {}
_lock = threading.Lock()


def _import(path: Path, name: str) -> ModuleType:
    st = path.stat()
    key = (path, st.st_mtime_ns, st.st_size)
    with _lock:
        module = _modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise InvalidArgumentError(f"{path}: cannot be imported as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look modules up by name
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            _modules[key] = module
        return module


@register
class PythonBackend(Backend):
    name = "python"
    model_file = "model.py"

    def load(self) -> None:
        ctx = self.context
        path = (ctx.version_dir / self.model_file).resolve()
        safe = "".join(c if c.isalnum() else "_" for c in ctx.model)
        module = _import(path, f"modelserve_models.{safe}.v{ctx.version}")
        cls = getattr(module, "Model", None)
        if cls is None or not isinstance(cls, type):
            raise InvalidArgumentError(f"{path}: defines no class 'Model'")
        self.model = cls()
        if not callable(getattr(self.model, "execute", None)):
            raise InvalidArgumentError(f"{path}: class Model has no execute(inputs) method")
        if hasattr(self.model, "load"):
            self.model.load(ctx)
        self.execute = self.model.execute  # the core calls it directly: no extra frame per batch

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # replaced in load()
        raise InvalidArgumentError(f"{self.context.label}: execute() before load()")

    def unload(self) -> None:
        model = getattr(self, "model", None)
        if model is not None and hasattr(model, "unload"):
            model.unload()
        self.model = None


def forget_module(version_dir: Path) -> None:
    """Drops the cached module of a version folder (after the version unloads), so a reload
    re-reads model.py."""
    path = (version_dir / PythonBackend.model_file).resolve()
    with _lock:
        for key in [k for k in _modules if k[0] == path]:
            module = _modules.pop(key)
            if sys.modules.get(module.__name__) is module:
                del sys.modules[module.__name__]
