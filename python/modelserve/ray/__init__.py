"""Scale out on a Ray cluster: a model repository as a Ray Serve application
(``pip install 'modelserve[ray]'``).

::

    import modelserve.ray
    modelserve.ray.deploy("examples/models", address="auto")   # or: modelserve ray deploy ...

Each served model version is a Ray Serve deployment whose replicas each host a
:class:`modelserve.Runtime` for that version (native dynamic batching inside every replica),
placed, load-balanced and autoscaled by Ray Serve from the model's ``ray`` config section. An
ingress deployment in front answers the Open Inference Protocol through Ray Serve's HTTP and gRPC
proxies with the single-process server's own frontends, so ``tritonclient`` works unchanged.

Naming: this package is ``modelserve.ray``; inside it, ``import ray`` is an absolute import and
reaches the real Ray (Python 3 has no implicit relative imports), so the name shadows nothing.
Ray itself is imported only when an attribute below is first used: ``import modelserve`` and
``import modelserve.ray`` work without Ray installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["deploy", "build_app", "plan", "deployment_name"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        try:
            from . import _app
        except ModuleNotFoundError as e:
            if e.name is not None and e.name.split(".")[0] == "ray":
                raise ModuleNotFoundError(
                    "modelserve.ray needs Ray Serve: pip install 'modelserve[ray]'", name="ray"
                ) from e
            raise
        return getattr(_app, name)
    raise AttributeError(f"module 'modelserve.ray' has no attribute '{name}'")
