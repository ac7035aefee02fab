import asyncio
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


class LoopThread:
    """An asyncio loop on a daemon thread, where server frontends run while tests drive them."""

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
