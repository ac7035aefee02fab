"""CUDA at run time. Everything here answers without a GPU or driver (no devices, no error)."""

from __future__ import annotations

from ._native import core as _core

__all__ = ["compiled", "is_available", "device_count", "device_name", "runtime_version"]


def compiled() -> bool:
    """Whether this build of modelserve includes CUDA support (``MODELSERVE_CUDA``)."""
    return _core.cuda.compiled()


def device_count() -> int:
    """Number of usable CUDA devices; 0 without a driver or GPU, or in a CPU-only build."""
    return _core.cuda.device_count()


def is_available() -> bool:
    """True when at least one CUDA device can be used."""
    return _core.cuda.is_available()


def device_name(device: int = 0) -> str:
    return _core.cuda.device_name(device)


def runtime_version() -> str:
    """The CUDA runtime modelserve was linked with (e.g. ``"13.0"``); ``""`` without CUDA."""
    return _core.cuda.runtime_version()
