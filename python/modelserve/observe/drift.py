"""Input drift of one model version: the core's DriftMonitor (Note [Input drift] in
csrc/monitor/drift_monitor.h) and what Python adds to it: the reference data file, the threshold
and its log lines, and the version's drift status.

The core counts every batch's inputs on the instance thread; nothing here runs per request.
:meth:`InputDrift.check` is called every few seconds by the runtime's ticker and logs a warning
when a feature's PSI rises past the threshold (and once more when it falls back under it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._native import core as _core
from ..errors import InvalidArgumentError
from ..tensor import NUMPY_DTYPES, Tensor

__all__ = ["InputDrift"]

log = logging.getLogger("modelserve.drift")


class InputDrift:
    """The drift of one version's numeric inputs. ``inputs`` are (name, datatype, shape) as
    config.yaml declares them (without the batch dimension when ``batched``); ``config`` is its
    :class:`modelserve.config.DriftConfig`; ``folders`` are where a relative ``reference`` file
    is looked for, in order (the version folder, then the model folder)."""

    def __init__(self, label: str, inputs: Sequence[tuple[str, str, list[int]]], *, batched: bool, config: Any,
                 folders: Sequence[Path] = ()) -> None:
        self.label = label
        self.threshold: float | None = config.threshold
        self.monitor = _core.DriftMonitor(
            label, [(n, dt, list(s)) for n, dt, s in inputs if dt != "BYTES"], batched=batched,
            reference_requests=config.reference_requests, window_requests=config.window_requests)
        self.reference_file: Path | None = None
        if config.reference is not None:
            self.reference_file = _find(config.reference, folders, label)
            self._load_reference(self.reference_file, [(n, dt) for n, dt, _ in inputs if dt != "BYTES"])
        self._lock = threading.Lock()
        self._drifting: frozenset[tuple[str, str]] = frozenset()  # guarded by _lock: logged as over

    def _load_reference(self, path: Path, inputs: list[tuple[str, str]]) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"{self.label}: drift.reference {path} cannot be read as .npz: {e}") from None
        for name, datatype in inputs:
            if name not in arrays:
                raise InvalidArgumentError(
                    f"{self.label}: drift.reference {path} has no array '{name}' (it has {sorted(arrays)}); "
                    "give one array of rows per numeric input")
            array = np.ascontiguousarray(arrays[name])
            want = NUMPY_DTYPES[datatype]
            if datatype == "BF16" and array.dtype.itemsize != 2:
                raise InvalidArgumentError(f"{self.label}: drift.reference {path}: array '{name}' must hold BF16 "
                                           f"(16-bit) values, got {array.dtype}")
            if datatype != "BF16" and array.dtype != want:
                array = array.astype(want)
            self.monitor.add_reference(name, Tensor.from_numpy(array.view(want) if datatype == "BF16" else array,
                                                               datatype))
        self.monitor.complete_reference()

    def snapshot(self) -> dict[str, Any]:
        """The core's counts and statistics: ``reference_complete``, ``reference_requests``,
        ``window_requests``, ``inputs``, ``summarized``, and ``features`` (input, feature, psi, ks)."""
        return self.monitor.snapshot()

    def status(self, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a version's status shows: the reference (``traffic`` or the file) and how complete
        it is, the window, the largest PSI, and with a threshold the features past it."""
        s = snapshot if snapshot is not None else self.snapshot()
        features = s["features"]
        worst = max(features, key=lambda f: f["psi"], default=None)
        out: dict[str, Any] = {
            "reference": str(self.reference_file) if self.reference_file is not None else "traffic",
            "reference_complete": s["reference_complete"],
            "reference_requests": s["reference_requests"],
            "window_requests": s["window_requests"],
            "inputs": s["inputs"],
            "max_psi": None if worst is None else {"input": worst["input"], "feature": worst["feature"],
                                                   "psi": worst["psi"]},
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold
            out["drifting"] = [f for f in features if f["psi"] > self.threshold]
        return out

    def check(self) -> None:
        """Logs a warning for the features whose PSI passed the threshold since the last check,
        and a line when none is past it any more."""
        if self.threshold is None:
            return
        over = [f for f in self.snapshot()["features"] if f["psi"] > self.threshold]
        now = frozenset((f["input"], f["feature"]) for f in over)
        with self._lock:
            new, cleared = now - self._drifting, bool(self._drifting) and not now
            self._drifting = now
        if new:
            worst = sorted((f for f in over if (f["input"], f["feature"]) in new), key=lambda f: -f["psi"])
            listed = ", ".join(f"{f['input']}[{f['feature']}] PSI {f['psi']:.3f}" for f in worst[:5])
            more = f" and {len(worst) - 5} more" if len(worst) > 5 else ""
            log.warning("%s: input drift past the threshold %g: %s%s", self.label, self.threshold, listed, more)
        elif cleared:
            log.info("%s: input drift back under the threshold %g", self.label, self.threshold)


def _find(name: str, folders: Sequence[Path], label: str) -> Path:
    path = Path(name)
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [folder / path for folder in folders]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InvalidArgumentError(f"{label}: drift.reference {name} not found (looked in "
                               f"{', '.join(str(c) for c in candidates) or 'nowhere'})")
