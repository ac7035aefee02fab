"""Instance autoscaling (Note [Autoscaling rule]), scale to zero and cold starts, memory budgets
(Note [Memory budget]) and runtime settings. The decision rule runs on a fake clock; the
integration tests drive the controller's ticks by hand, so nothing depends on timing."""

import sys
import textwrap
import threading

import numpy as np
import pytest

from modelserve import Runtime
from modelserve.autoscale import Scaler, ScalingPolicy
from modelserve.config import ConfigError, parse_config
from modelserve.errors import InvalidArgumentError, ResourceExhaustedError
from modelserve.memory_budget import MemoryBudget, parse_budget, parse_bytes
from modelserve.repository import LoadError

POLICY = ScalingPolicy(min=1, max=8, target=4, window_s=2, upscale_delay_s=3, downscale_delay_s=10)


def run(scaler: Scaler, load: "callable", start: float, end: float, instances: int, tick: float = 0.5):
    """Ticks from ``start`` to ``end`` applying every decision; returns (events with times, count)."""
    events, t = [], start
    while t <= end + 1e-9:
        e = scaler.observe(t, queued=load(t), in_flight=0, instances=instances, requests=int(t * 100))
        if e is not None:
            events.append((t, e))
            instances = e.new
        t += tick
    return events, instances


# --- the decision rule --------------------------------------------------------------------------


def test_step_up_scales_within_window_plus_delay_and_not_before_the_delay():
    scaler = Scaler(POLICY)
    events, n = run(scaler, lambda t: 0 if t < 10 else 20, 0, 30, instances=1)
    assert n == 5  # ceil(20 / 4)
    assert all(e.new > e.old for _, e in events)
    first = events[0][0]
    assert 10 + POLICY.upscale_delay_s <= first <= 10 + POLICY.window_s + POLICY.upscale_delay_s + 0.5


def test_step_down_scales_back_after_the_downscale_delay():
    scaler = Scaler(POLICY)
    events, n = run(scaler, lambda t: 20 if t < 20 else 2, 0, 60, instances=5)
    downs = [(t, e) for t, e in events if e.new < e.old]
    assert n == 1 and downs
    assert downs[0][0] >= 20 + POLICY.downscale_delay_s
    assert downs[0][0] <= 20 + POLICY.window_s + POLICY.downscale_delay_s + 0.5


def test_both_directions_act_with_inexact_tick_times():
    # 0.1 s ticks accumulate float error; a delay equal to the sample horizon must still elapse.
    policy = ScalingPolicy(min=1, max=3, target=2, window_s=0.5, upscale_delay_s=0.5, downscale_delay_s=1)
    events, n = run(Scaler(policy), lambda t: 6 if t < 2 else 0, 0, 5, instances=1, tick=0.1)
    assert [e.new for _, e in events if e.new > e.old] == [3]
    assert n == 1 and events[-1][0] < 2 + 0.5 + 1 + 0.3


@pytest.mark.parametrize("load", [6, 13, 31])
def test_constant_load_never_reverses(load):
    scaler = Scaler(POLICY)
    events, n = run(scaler, lambda t: load, 0, 300, instances=1)
    assert all(e.new > e.old for _, e in events), events  # up only, never back
    assert n == min(8, -(-load // 4))


def test_load_wobbling_inside_the_tolerance_band_does_not_flap():
    # 3 instances x target 4 = 12; a load between 11 and 12 asks for 3 going up and keeps 3 going down.
    scaler = Scaler(POLICY)
    events, n = run(scaler, lambda t: 11 if int(t * 2) % 2 else 12, 0, 300, instances=3)
    assert events == [] and n == 3


def test_bounds_clamp_the_recommendation():
    scaler = Scaler(ScalingPolicy(min=2, max=3, target=1, window_s=1, upscale_delay_s=0, downscale_delay_s=0))
    _, n = run(scaler, lambda t: 100, 0, 5, instances=2)
    assert n == 3
    _, n = run(scaler, lambda t: 0, 6, 20, instances=3)
    assert n == 2


def test_scale_to_zero_after_idle_and_cold_start_on_a_queued_request():
    policy = ScalingPolicy(min=1, max=2, target=1, window_s=1, upscale_delay_s=1, downscale_delay_s=1,
                           scale_to_zero_after_s=5)
    scaler = Scaler(policy)
    assert scaler.observe(0, 0, 0, 1, requests=7) is None
    assert scaler.observe(4, 0, 0, 1, requests=7) is None
    event = scaler.observe(5, 0, 0, 1, requests=7)
    assert event is not None and event.new == 0
    assert scaler.observe(6, 0, 0, 0, requests=7) is None  # zero stays zero while idle
    cold = scaler.observe(7, queued=1, in_flight=0, instances=0, requests=7)
    assert cold is not None and (cold.old, cold.new) == (0, 1)


def test_activity_between_ticks_postpones_scale_to_zero():
    scaler = Scaler(ScalingPolicy(scale_to_zero_after_s=5))
    for t in range(0, 20):
        assert scaler.observe(t, 0, 0, 1, requests=t) is None  # a request completed each tick


# --- config -------------------------------------------------------------------------------------


def test_instances_config_defaults_and_bounds():
    c = parse_config({"max_batch_size": 8, "instances": {"min": 2, "max": 4}})
    assert c.instances.count == 2
    p = ScalingPolicy.from_config(c.instances, c.max_batch_size)
    assert (p.min, p.max, p.target, p.enabled) == (2, 4, 8.0, True)
    assert not ScalingPolicy.from_config(parse_config({}).instances).enabled
    with pytest.raises(ConfigError, match=r"instances: expected min <= count <= max; got min=5, count=5, max=4"):
        parse_config({"instances": {"count": 5, "max": 4}})
    with pytest.raises(ConfigError, match="instances.tolerance"):
        parse_config({"instances": {"tolerance": 1.0}})


def test_memory_sizes_parse():
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("1.5k") == 1500 and parse_bytes(7) == 7
    assert parse_budget("cpu=1MiB, gpu=2MiB") == {"cpu": 1 << 20, "cuda:0": 2 << 20}
    with pytest.raises(InvalidArgumentError, match="not a size"):
        parse_bytes("lots")
    with pytest.raises(InvalidArgumentError, match="unknown device 'tpu'"):
        parse_budget("tpu=1G")


# --- a served model -----------------------------------------------------------------------------

MODEL = textwrap.dedent("""
    import threading
    import numpy as np

    GATE = threading.Event()
    GATE.set()
    CALLS = []
    UNLOADS = []

    class Model:
        def load(self, context):
            self.ballast = np.ones({ballast}, dtype=np.uint8)  # touched: resident
        def execute(self, inputs):
            CALLS.append(inputs["INPUT0"].copy())
            assert GATE.wait(30)
            return {{"OUTPUT0": inputs["INPUT0"] * 2}}
        def unload(self):
            UNLOADS.append(1)
            self.ballast = None
""")


def make_model(repo, name, instances="{count: 1, device: cpu}", ballast=1, extra=""):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(MODEL.format(ballast=ballast))
    (repo / name / "config.yaml").write_text(
        "max_batch_size: 0\n"
        "inputs: [{name: INPUT0, datatype: FP32, shape: [2]}]\n"
        "outputs: [{name: OUTPUT0, datatype: FP32, shape: [2]}]\n"
        f"instances: {instances}\n" + extra
    )


def module_of(rt, name):
    mv = rt.repository.get(name).versions[1]
    return sys.modules[type(mv._backends[0].model).__module__], mv


X = {"INPUT0": np.ones(2, np.float32)}


def wait_for(condition, timeout=30.0):
    """The cold-start thread records its result just after the instance starts serving, so a
    request can complete a moment before; wait for the record (generously)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_load_step_scales_up_then_down_and_every_request_completes(tmp_path):
    make_model(tmp_path, "m", "{count: 1, min: 1, max: 3, target: 2, window_s: 1, upscale_delay_s: 1, "
                              "downscale_delay_s: 2, device: cpu}")
    with Runtime(tmp_path, autoscale_tick_s=3600) as rt:  # ticks by hand
        mod, mv = module_of(rt, "m")
        mod.GATE.clear()
        pending = [rt.submit("m", X) for _ in range(10)]
        ticks = [rt.autoscaler.tick(t / 2) for t in range(5)]
        ups = [e for round_ in ticks for _, e in round_]
        assert [(e.old, e.new) for e in ups] == [(1, 3)]
        assert mv.engine.instance_count == 3 and mv.scaling_state()["scale_events"]["up"] == 1
        mod.GATE.set()
        for p in pending:
            p.wait()
            np.testing.assert_array_equal(p.outputs()["OUTPUT0"], [2, 2])
        events = [e for t in range(6, 20) for _, e in rt.autoscaler.tick(t / 2)]
        assert [(e.old, e.new) for e in events] == [(3, 1)]
        assert mv.engine.instance_count == 1
        assert len(mod.UNLOADS) == 2  # the retired instances' backends were unloaded


def test_scale_to_zero_then_cold_start_serves_the_next_request(tmp_path):
    make_model(tmp_path, "m", "{count: 1, scale_to_zero_after_s: 2, device: cpu}")
    with Runtime(tmp_path, autoscale_tick_s=3600) as rt:
        mod, mv = module_of(rt, "m")
        rt.autoscaler.tick(100.0)
        rt.autoscaler.tick(102.5)
        assert mv.engine.instance_count == 0 and mv.instances == 0
        assert rt.model_ready("m") and len(mod.UNLOADS) == 1
        out = rt.infer("m", X, timeout_us=30_000_000)  # waits in the queue for the cold start
        np.testing.assert_array_equal(out["OUTPUT0"], [2, 2])
        assert wait_for(lambda: mv.last_cold_start_s is not None)
        state = rt.settings("m")["instances"]
        assert state["count"] == 1 and state["scale_events"]["cold_start"] == 1
        assert state["last_cold_start_s"] is not None and state["last_cold_start_s"] >= 0


def test_memory_budget_refuses_a_load_naming_budget_footprint_and_what_is_loaded(tmp_path):
    make_model(tmp_path, "a", ballast=48 << 20)
    make_model(tmp_path, "b", ballast=48 << 20)
    with Runtime(tmp_path, model_control_mode="explicit", memory_budget="cpu=80MiB") as rt:
        rt.load_model("a")
        with pytest.raises(LoadError) as e:
            rt.load_model("b")
        message = str(e.value)
        assert "memory budget of cpu is 80.0 MiB" in message and "model 'a' version 1" in message
        assert "model 'b' version 1" in message and "needs" in message
        np.testing.assert_array_equal(rt.infer("a", X)["OUTPUT0"], [2, 2])  # a is untouched


def test_memory_budget_evicts_the_idle_model_and_cold_starts_it_on_demand(tmp_path):
    make_model(tmp_path, "a", ballast=48 << 20)
    make_model(tmp_path, "b", ballast=48 << 20)
    with Runtime(tmp_path, model_control_mode="explicit", memory_budget="cpu=80MiB", memory_evict=True) as rt:
        rt.load_model("a")
        rt.load_model("b")
        a = rt.repository.get("a").versions[1]
        b = rt.repository.get("b").versions[1]
        assert a.instances == 0 and b.instances == 1 and rt.model_ready("a")
        assert a.scale_events["evicted"] == 1
        np.testing.assert_array_equal(rt.infer("a", X, timeout_us=30_000_000)["OUTPUT0"], [2, 2])
        assert wait_for(lambda: a.last_cold_start_s is not None)
        assert a.instances == 1 and b.instances == 0  # b was idle and least recently used
        used = rt.repository.budget.used("cpu")
        assert used <= 80 << 20


def test_scale_up_past_the_budget_is_refused_with_resource_exhausted(tmp_path):
    make_model(tmp_path, "m", "{count: 1, min: 1, max: 4, device: cpu}", ballast=40 << 20)
    with Runtime(tmp_path, memory_budget="cpu=100MiB") as rt:
        with pytest.raises(ResourceExhaustedError, match="memory budget of cpu is 100.0 MiB"):
            rt.set_instances("m", count=4)
        assert rt.settings("m")["instances"]["count"] == 1


def test_runtime_changes_under_load_lose_nothing(tmp_path):
    make_model(tmp_path, "m", "{count: 1, min: 1, max: 4, device: cpu}",
               extra="dynamic_batching: {max_queue_size: 0}\n")
    with Runtime(tmp_path, autoscale_tick_s=3600) as rt:
        results, errors = [], []
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    results.append(rt.infer("m", X)["OUTPUT0"].tolist())
                except Exception as e:  # any loss fails the test
                    errors.append(e)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for count in (3, 1, 4, 2):
            rt.set_instances("m", count=count)
            rt.set_batching("m", max_queue_delay_us=count * 100, max_queue_size=1000 * count)
        s = rt.update_settings("m", instances={"min": 2, "max": 3}, dynamic_batching={"priority_levels": 2})
        stop.set()
        for t in threads:
            t.join()
        assert errors == [] and results and all(r == [2, 2] for r in results)
        assert s["instances"]["min"] == 2 and s["instances"]["count"] == 2
        assert s["dynamic_batching"]["priority_levels"] == 2 and s["dynamic_batching"]["max_queue_size"] == 2000


def test_settings_changes_are_checked_before_anything_changes(tmp_path):
    make_model(tmp_path, "m")
    with Runtime(tmp_path) as rt:
        with pytest.raises(InvalidArgumentError, match="unknown or fixed setting.*max_batch_size"):
            rt.set_batching("m", max_batch_size=4)
        with pytest.raises(InvalidArgumentError, match=r"instance count 5 is outside \[min=1, max=1\]"):
            rt.set_instances("m", count=5)
        with pytest.raises(InvalidArgumentError, match="1 <= min <= max; got min=3, max=2"):
            rt.set_instances("m", min=3, max=2)
        with pytest.raises(ConfigError, match="max_queue_size"):
            rt.set_batching("m", max_queue_size=-1)
        assert rt.settings("m")["instances"]["count"] == 1


def test_memory_budget_object_charges_and_releases():
    budget = MemoryBudget({"cpu": "1KiB"})

    class V:
        label = "model 'v' version 1"

    v = V()
    budget.reserve(v, "cpu", 600, "v")
    with pytest.raises(ResourceExhaustedError, match=r"needs 600 B on cpu.*1.0 KiB.*model 'v' version 1 600 B"):
        budget.reserve(object(), "cpu", 600, "w")
    budget.release(v)
    assert budget.used("cpu") == 0


def test_deploy_manifests_parse_and_scale_on_the_saturation_gauge():
    import pathlib

    import yaml

    deploy = pathlib.Path(__file__).resolve().parents[1] / "deploy"
    files = sorted(deploy.rglob("*.yaml"))
    assert len(files) == 4
    docs = {f.name: [d for d in yaml.safe_load_all(f.read_text()) if d] for f in files}
    (hpa,) = docs["hpa.yaml"]
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "modelserve_model_saturation"
    (scaled,) = docs["scaledobject.yaml"]
    assert "modelserve_model_saturation" in scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert {d["kind"] for d in docs["deployment.yaml"]} == {"Deployment", "Service"}


def test_the_background_ticker_scales_up_under_load_and_back_down_when_it_ends(tmp_path):
    make_model(tmp_path, "m", "{count: 1, min: 1, max: 3, target: 2, window_s: 0.2, upscale_delay_s: 0.2, "
                              "downscale_delay_s: 0.5, device: cpu}")
    with Runtime(tmp_path, autoscale_tick_s=0.05) as rt:
        mod, mv = module_of(rt, "m")
        mod.GATE.clear()
        pending = [rt.submit("m", X) for _ in range(10)]
        assert wait_for(lambda: mv.engine.instance_count == 3)
        mod.GATE.set()
        for p in pending:
            p.wait()
            p.outputs()
        assert wait_for(lambda: mv.engine.instance_count == 1)
        assert mv.scale_events["up"] >= 1 and mv.scale_events["down"] >= 1
