import threading

import numpy as np
import pytest

import modelserve


def pytest_collection_modifyitems(config, items):
    if modelserve.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (modelserve.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Recorder:
    """A Python backend that records every batch it runs and returns ``OUTPUT0 = INPUT0 * 2``
    (plus ``OUTPUT1 = INPUT0 + 1``). With ``hold=True`` its first batch blocks until
    ``release()``, which keeps the (single) instance busy while a test fills the queue."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.lock = threading.Lock()
        self.started = threading.Event()
        self._gate = threading.Event()
        if not hold:
            self._gate.set()
        self._held = False

    def release(self) -> None:
        self._gate.set()

    def execute(self, inputs):
        with self.lock:
            self.batches.append({k: np.array(v, copy=True) for k, v in inputs.items()})
            first = not self._held
            self._held = True
        self.started.set()
        if first:
            assert self._gate.wait(30), "test never released the backend"
        x = inputs["INPUT0"]
        if x.dtype == object:
            return {"OUTPUT0": x, "OUTPUT1": x}
        return {"OUTPUT0": x * 2, "OUTPUT1": x + 1}

    def batch_sizes(self) -> list[int]:
        with self.lock:
            return [len(b["INPUT0"]) for b in self.batches]


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def held():
    r = Recorder(hold=True)
    yield r
    r.release()
