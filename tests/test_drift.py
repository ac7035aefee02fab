"""Input drift (Note [Input drift] in csrc/monitor/drift_monitor.h): the core's counts and
statistics proven against a NumPy reference implementation with Hypothesis, and the behaviour a
user sees through the Runtime, config.yaml, /metrics and the version's status."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelserve
from modelserve.config import DriftConfig
from modelserve.engine import ModelEngine
from modelserve.observe.drift import InputDrift

IDENTITY = """
class Model:
    def execute(self, inputs):
        return {"Y": inputs["X"][:, :1]}
"""


class Echo:
    def execute(self, inputs):
        return {"Y": inputs["X"][:, :1]}


# --- the reference implementation -----------------------------------------------------------------


def reference_statistics(reference_rows, window_rows, fine=100, coarse=10, floor=1e-4):
    """PSI and KS of one feature as the note defines them, computed with NumPy."""
    ref = np.sort(np.asarray(reference_rows, np.float64))
    ref = ref[~np.isnan(ref)]
    m = len(ref)
    ranks = [max(-(-k * m // fine), 1) - 1 for k in range(1, fine)]  # ceil(k m / 100), nearest rank
    edges = ref[ranks]
    ref_bins = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=fine).astype(np.float64)
    win = np.asarray(window_rows, np.float64)
    win = win[~np.isnan(win)]
    win_bins = np.bincount(np.searchsorted(edges, win, side="left"), minlength=fine).astype(np.float64)
    r = ref_bins.reshape(coarse, -1).sum(1)
    w = win_bins.reshape(coarse, -1).sum(1)
    both = (r > 0) | (w > 0)
    rp = np.maximum(r / r.sum(), floor)[both]
    wp = np.maximum(w / w.sum(), floor)[both]
    psi = float(np.sum((wp - rp) * np.log(wp / rp)))
    ks = float(np.max(np.abs(np.cumsum(ref_bins / ref_bins.sum()) - np.cumsum(win_bins / win_bins.sum()))))
    continuous = len(np.unique(ref)) > 20
    return psi, (ks if continuous else None)


def window_of(n, window_requests):
    """The requests the window holds after n requests: the last ten complete blocks and the one filling."""
    block = max(1, window_requests // 10)
    complete = n // block
    return (complete - min(complete, 10)) * block


def _engine_with_drift(features, reference_requests, window_requests, rows_per_request=8):
    engine = ModelEngine("m", Echo(), max_batch_size=64, inputs=[("X", "FP64", [features])],
                         outputs=[("Y", "FP64", [1])])
    drift = InputDrift("model 'm' version 1", [("X", "FP64", [features])], batched=True,
                       config=DriftConfig(reference_requests=reference_requests, window_requests=window_requests))
    engine.set_drift_monitor(drift.monitor)
    return engine, drift


values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=64),
    st.sampled_from([0.0, 1.0, 2.5, float("nan")]),  # ties, a discrete feature, skipped NaN
)


@given(data=st.data(), reference=st.integers(20, 60), window=st.integers(10, 80), extra=st.integers(1, 120))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_cores_psi_and_ks_agree_with_numpy(data, reference, window, extra):
    features = 2
    rows = data.draw(st.lists(st.lists(values, min_size=features, max_size=features),
                              min_size=reference + extra, max_size=reference + extra))
    if any(all(np.isnan(r[f]) for r in rows[:reference]) for f in range(features)):
        return  # a feature with no reference values is not reported; covered elsewhere
    engine, drift = _engine_with_drift(features, reference, window)
    try:
        for r in rows:
            engine.infer({"X": np.asarray([r], np.float64)})
        snap = drift.snapshot()
    finally:
        engine.close()
    start = window_of(len(rows), window)
    got = {f["feature"]: f for f in snap["features"]}
    assert snap["window_requests"] == len(rows) - start
    for f in range(features):
        want_psi, want_ks = reference_statistics([r[f] for r in rows[:reference]], [r[f] for r in rows[start:]])
        assert got[str(f)]["psi"] == pytest.approx(want_psi, rel=1e-9, abs=1e-12)
        assert got[str(f)]["ks"] == (None if want_ks is None else pytest.approx(want_ks, abs=1e-12))


def test_a_request_counts_at_most_eight_rows_evenly_strided():
    engine, drift = _engine_with_drift(1, 1, 1000)
    try:
        x = np.arange(20, dtype=np.float64).reshape(20, 1)  # rows 0..19: the 8 taken are k*20/8
        engine.infer({"X": x})
        engine.infer({"X": x})
        [feature] = drift.snapshot()["features"]
        taken = [k * 20 // 8 for k in range(8)]
        assert feature["psi"] == pytest.approx(reference_statistics(taken, taken + taken)[0], abs=1e-12)
    finally:
        engine.close()


# --- through the Runtime --------------------------------------------------------------------------


def _repository(root: Path, config: str = "", model: str = IDENTITY, shape: str = "[4]") -> Path:
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.py").write_text(textwrap.dedent(model))
    (root / "m" / "config.yaml").write_text(textwrap.dedent(f"""
        backend: python
        max_batch_size: 8
        inputs: [{{name: X, datatype: FP32, shape: {shape}}}]
        outputs: [{{name: Y, datatype: FP32, shape: [1]}}]
    """) + textwrap.dedent(config))
    return root


def _psi(rt, model="m"):
    status = rt.model_versions(model)["versions"][1]["drift"]
    features = rt.repository.get(model).versions[1].drift.snapshot()["features"]
    return status, {(f["input"], f["feature"]): f["psi"] for f in features}


def test_psi_of_a_shifted_normal_passes_a_quarter_and_of_the_same_normal_stays_under_a_tenth(tmp_path):
    rng = np.random.default_rng(7)
    with modelserve.Runtime(_repository(tmp_path)) as rt:
        for _ in range(1000):  # the reference: the first 1,000 requests
            rt.infer("m", {"X": rng.normal(0, 1, (1, 4)).astype(np.float32)})
        for _ in range(1000):
            rt.infer("m", {"X": rng.normal(0, 1, (1, 4)).astype(np.float32)})
        status, same = _psi(rt)
        assert status["reference_complete"] and status["reference"] == "traffic"
        assert set(same) == {("X", str(i)) for i in range(4)}
        assert max(same.values()) < 0.1
        for _ in range(1100):  # the window is now all N(2, 1)
            rt.infer("m", {"X": rng.normal(2, 1, (1, 4)).astype(np.float32)})
        _, shifted = _psi(rt)
        assert min(shifted.values()) > 0.25


def test_a_reference_data_file_reports_from_the_first_request(tmp_path):
    root = _repository(tmp_path, "drift: {reference: reference.npz}\n")
    rng = np.random.default_rng(1)
    np.savez(root / "m" / "1" / "reference.npz", X=rng.normal(0, 1, (2000, 4)))  # FP64: cast to FP32
    with modelserve.Runtime(root) as rt:
        mv = rt.repository.get("m").versions[1]
        assert mv.drift.snapshot()["features"] == []  # the window is empty until a request comes
        for _ in range(300):
            rt.infer("m", {"X": rng.normal(0, 1, (1, 4)).astype(np.float32)})
        status, psi = _psi(rt)
        assert status["reference"].endswith("reference.npz") and status["reference_requests"] == 2000
        assert len(psi) == 4 and max(psi.values()) < 0.1


def test_a_reference_file_without_an_input_fails_the_load_naming_it(tmp_path):
    root = _repository(tmp_path, "drift: {reference: reference.npz}\n")
    np.savez(root / "m" / "reference.npz", Z=np.zeros((10, 4)))  # in the model folder: found there too
    with modelserve.Runtime(root) as rt:
        versions = rt.model_versions("m")["versions"]
        assert versions[1]["state"] == "FAILED"
        assert "no array 'X'" in versions[1]["reason"] and "['Z']" in versions[1]["reason"]


def test_wide_and_variable_inputs_are_tracked_by_mean_and_std(tmp_path):
    with modelserve.Runtime(_repository(tmp_path, "drift: {reference_requests: 50}\n", shape="[100]")) as rt:
        rng = np.random.default_rng(2)
        for _ in range(60):
            rt.infer("m", {"X": rng.normal(0, 1, (2, 100)).astype(np.float32)})
        status, psi = _psi(rt)
        assert set(psi) == {("X", "mean"), ("X", "std")}
        assert rt.repository.get("m").versions[1].drift.snapshot()["summarized"] == ["X"]


def test_bytes_inputs_are_skipped_and_drift_can_be_turned_off(tmp_path):
    root = tmp_path / "repo"
    (root / "t" / "1").mkdir(parents=True)
    (root / "t" / "1" / "model.py").write_text(
        "class Model:\n    def execute(self, inputs):\n        return {'Y': inputs['T']}\n")
    (root / "t" / "config.yaml").write_text("backend: python\ninputs: [{name: T, datatype: BYTES, shape: [1]}]\n"
                                             "outputs: [{name: Y, datatype: BYTES, shape: [1]}]\n")
    _repository(root, "drift: {enabled: false}\n")
    with modelserve.Runtime(root) as rt:
        assert rt.repository.get("t").versions[1].drift is None
        assert rt.repository.get("m").versions[1].drift is None
        assert "drift" not in rt.model_versions("m")["versions"][1]


def test_warmup_is_not_part_of_the_reference(tmp_path):
    root = _repository(tmp_path, "drift: {reference_requests: 5}\nwarmup: [{batch_size: 1, count: 20, data: zero}]\n")
    with modelserve.Runtime(root) as rt:
        assert rt.model_versions("m")["versions"][1]["drift"]["reference_requests"] == 0
        rt.infer("m", {"X": np.ones((1, 4), np.float32)})
        assert rt.model_versions("m")["versions"][1]["drift"]["reference_requests"] == 1


def test_the_metric_family_is_there_from_the_start_and_samples_once_the_reference_is_complete(tmp_path):
    from modelserve.server.metrics import Metrics

    with modelserve.Runtime(_repository(tmp_path, "drift: {reference_requests: 30}\n")) as rt:
        metrics = Metrics(rt)
        text = metrics.render()[0].decode()
        assert "# TYPE modelserve_input_drift_psi gauge" in text
        assert "modelserve_input_drift_psi{" not in text
        assert 'modelserve_input_drift_reference_requests{model="m",version="1"} 0.0' in text
        rng = np.random.default_rng(3)
        for _ in range(30):  # more than 20 distinct values each: continuous, so KS too
            rt.infer("m", {"X": rng.normal(0, 1, (1, 4)).astype(np.float32)})
        text = metrics.render()[0].decode()
        for i in range(4):
            assert f'modelserve_input_drift_psi{{feature="{i}",input="X",model="m",version="1"}}' in text
            assert f'modelserve_input_drift_ks{{feature="{i}",input="X",model="m",version="1"}}' in text


def test_a_threshold_logs_a_warning_and_shows_in_the_status(tmp_path, caplog):
    root = _repository(tmp_path, "drift: {reference_requests: 200, window_requests: 200, threshold: 0.25}\n")
    rng = np.random.default_rng(4)
    with modelserve.Runtime(root) as rt:
        for _ in range(200):
            rt.infer("m", {"X": rng.normal(0, 1, (1, 4)).astype(np.float32)})
        with caplog.at_level(logging.WARNING, logger="modelserve.drift"):
            rt.autoscaler.check_drift()
        assert not caplog.records and rt.model_versions("m")["versions"][1]["drift"]["drifting"] == []
        for _ in range(220):
            rt.infer("m", {"X": rng.normal(3, 1, (1, 4)).astype(np.float32)})
        with caplog.at_level(logging.WARNING, logger="modelserve.drift"):
            rt.autoscaler.check_drift()
            rt.autoscaler.check_drift()  # once per crossing, not once per check
        [warning] = caplog.records
        assert "model 'm' version 1: input drift past the threshold 0.25: X[" in warning.getMessage()
        status = rt.model_versions("m")["versions"][1]["drift"]
        assert status["threshold"] == 0.25 and {f["feature"] for f in status["drifting"]} == {"0", "1", "2", "3"}


def test_validate_checks_the_reference_file_offline(tmp_path):
    from modelserve.repository import validate_repository

    root = _repository(tmp_path, "drift: {reference: reference.npz}\n")
    errors = validate_repository(root)
    assert len(errors) == 1 and "drift.reference reference.npz not found" in errors[0]
    np.savez(root / "m" / "reference.npz", X=np.zeros((10, 3)))
    [error] = validate_repository(root)
    assert "drift.reference" in error and "expected rows of shape [4]" in error and "[10, 3]" in error
    np.savez(root / "m" / "reference.npz", X=np.zeros((10, 4)))
    assert validate_repository(root) == []


def test_the_status_route_shows_a_versions_drift(tmp_path):
    httpx = pytest.importorskip("httpx")
    from test_observe import Served

    root = _repository(tmp_path, "drift: {reference_requests: 30, threshold: 0.5}\n")
    served = Served(root, None)
    try:
        rng = np.random.default_rng(5)
        for _ in range(30):
            body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                "data": rng.normal(0, 1, 4).astype(np.float32).tolist()}]}
            assert httpx.post(served.http + "/v2/models/m/infer", json=body).status_code == 200
        status = httpx.get(served.http + "/modelserve/v1/models/m/status").json()
        drift = status["versions"]["1"]["drift"]
        assert drift["reference_complete"] and drift["threshold"] == 0.5 and drift["drifting"] == []
        assert drift["inputs"] == ["X"] and drift["max_psi"]["input"] == "X"
    finally:
        served.close()
