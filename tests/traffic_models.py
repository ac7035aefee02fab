"""Small Python-backend repositories for the traffic tests: versions that differ in output,
error rate or latency (shared by test_traffic.py and test_traffic_server.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

CONFIG = """
max_batch_size: 0
inputs: [{name: INPUT0, datatype: FP32, shape: [4]}]
outputs:
  - {name: OUTPUT0, datatype: FP32, shape: [4]}
  - {name: CLASS, datatype: INT64, shape: [1]}
version_policy: {all: true}
"""

MODEL = """
import time
import numpy as np

class Model:
    def load(self, context):
        self.n = 0

    def execute(self, inputs):
        self.n += 1
        if {fail_every} and self.n % {fail_every} == 0:
            raise RuntimeError("injected failure")
        if {sleep}:
            time.sleep({sleep})
        x = inputs["INPUT0"]
        return {{"OUTPUT0": x + np.float32({version}), "CLASS": np.array([{version}], np.int64)}}
"""

X = np.zeros(4, np.float32)


def write_model(repo: Path, name: str, versions: dict[int, dict], extra: str = "") -> Path:
    """``versions``: {number: {"fail_every": k (every k-th request raises), "sleep": seconds}};
    each version answers OUTPUT0 = INPUT0 + number and CLASS = [number]."""
    (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / name / "config.yaml").write_text(CONFIG + textwrap.dedent(extra))
    for v, behaviour in versions.items():
        vdir = repo / name / str(v)
        vdir.mkdir(exist_ok=True)
        (vdir / "model.py").write_text(MODEL.format(
            version=v, fail_every=behaviour.get("fail_every", 0), sleep=behaviour.get("sleep", 0)))
    return repo / name


def version_of(outputs) -> int:
    return int(np.asarray(outputs["CLASS"]).ravel()[0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
