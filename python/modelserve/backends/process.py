"""Process-isolated instances of the ``python`` backend (``instances: {isolation: process}``).

Each instance is a worker process (:mod:`modelserve.backends._worker`) that the native core starts,
feeds through shared memory and supervises (Note [Process instances] in
csrc/exec/process_backend.h). This module builds the core's ``ProcessInstances`` for a version:
the worker's command and start message, where its output goes, and what happens when the version's
workers keep crashing.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._native import core as _core

if TYPE_CHECKING:
    from ..config import ModelConfig

__all__ = ["process_instances", "WORKER_COMMAND"]

log = logging.getLogger("modelserve.worker")

#: The command the core runs for every worker (its control socket is file descriptor 3).
WORKER_COMMAND = (sys.executable, "-m", "modelserve.backends._worker")


def process_instances(
    model: str,
    version: int,
    version_dir: Path,
    config: "ModelConfig",
    outputs: Iterable[tuple[str, str, list[int]]],
    on_failed: Callable[[str], None] | None = None,
) -> Any:
    """The core's ``ProcessInstances`` for one version: pass it to :class:`ModelEngine` as its
    backend. ``outputs`` are the declared outputs (their blocks are allocated before each batch
    when their shape is fixed); ``on_failed(reason)`` runs, on a core thread, once the version's
    workers have crashed ``5`` times within a minute."""
    label = f"model '{model}' version {version}"
    init = {
        "model": model,
        "version": version,
        "version_dir": str(version_dir),
        "config": config.model_dump(mode="json"),
        "sys_path": [p for p in sys.path if p],
        "spin_us": config.instances.spin_us,
    }

    def worker_log(instance: int, line: str, event: bool) -> None:
        # What the worker printed is information; a crash or a failed restart is a warning.
        log.log(logging.WARNING if event else logging.INFO, "%s instance %d: %s", label, instance, line)

    return _core.ProcessInstances(
        label,
        list(WORKER_COMMAND),
        init=json.dumps(init).encode(),
        execute_timeout_s=config.instances.execute_timeout_s or 0.0,
        spin_us=config.instances.spin_us,
        max_batch_size=config.max_batch_size,
        outputs=[(n, dt, list(dims)) for n, dt, dims in outputs],
        log=worker_log,
        on_failed=on_failed,
    )
