"""Traffic management through the Runtime: splits, sticky keys, shadows, canary rollouts,
readouts, persistence, validation (fake clocks: rollouts tick only when a test says so)."""

import asyncio
import collections
import json
import threading
import time

import numpy as np
import pytest
from modelserve import Runtime
from modelserve.errors import (
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from modelserve.traffic import Router, parse_policy
from modelserve.traffic.router import BUCKETS, bucket_of
from modelserve.traffic.stats import compare_outputs, error_rate_diff
from traffic_models import FakeClock, X, version_of, write_model


def split(*weights, **extra):
    return {"targets": [{"version": v, "weight": w} for v, w in weights], **extra}


@pytest.fixture
def repo(tmp_path):
    write_model(tmp_path / "repo", "m", {1: {}, 2: {}}, "labels: {stable: 1}\n")
    return tmp_path / "repo"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def rt(repo, clock):
    with Runtime(repo, traffic_clock=clock) as runtime:
        yield runtime


def served(rt, n, model="m", **kw):
    return [version_of(rt.infer(model, {"INPUT0": X}, **kw)) for _ in range(n)]


# --- router ---------------------------------------------------------------------------------------


def test_router_keeps_keys_outside_the_moved_range():
    before, after = Router("m", [90, 10]), Router("m", [70, 30])
    keys = [f"user-{i}" for i in range(2000)]
    for k in keys:
        if before.choose(k) == 1:
            assert after.choose(k) == 1  # a canary's users stay on it when it grows
    moved = sum(before.choose(k) != after.choose(k) for k in keys)
    assert 0 < moved < 0.3 * len(keys)


def test_router_never_chooses_a_zero_weight_target():
    r = Router("m", [0, 100, 0])
    assert {r.choose() for _ in range(2000)} == {1}
    assert {r.choose(str(k)) for k in range(2000)} == {1}


def test_bucket_depends_on_the_key_and_the_endpoint_only():
    assert bucket_of("m", "u1") == bucket_of("m", "u1")
    assert 0 <= bucket_of("m", "u1") < BUCKETS
    assert [bucket_of("m", str(k)) for k in range(50)] != [bucket_of("n", str(k)) for k in range(50)]


# --- splits ---------------------------------------------------------------------------------------


def test_ten_thousand_requests_at_90_10_land_within_statistical_bounds(rt):
    rt.traffic.set_policy("m", split((1, 90), (2, 10)))
    counts = np.bincount(served(rt, 10_000), minlength=3)
    # 1000 expected on version 2, standard deviation 30: five of them either side.
    assert 850 <= counts[2] <= 1150 and counts[1] + counts[2] == 10_000


def test_sticky_keys_never_change_target_while_the_policy_is_unchanged(rt):
    rt.traffic.set_policy("m", split((1, 50), (2, 50), sticky_key="user_id"))
    first = {u: served(rt, 1, routing={"user_id": u})[0] for u in range(200)}
    assert set(first.values()) == {1, 2}
    for _ in range(3):
        assert {u: served(rt, 1, routing={"user_id": u})[0] for u in range(200)} == first


def test_requests_without_the_sticky_key_are_split_at_random(rt):
    rt.traffic.set_policy("m", split((1, 50), (2, 50), sticky_key="user_id"))
    assert set(served(rt, 100)) == {1, 2}


def test_a_request_naming_a_version_bypasses_the_split(rt):
    rt.traffic.set_policy("m", split((1, 0), (2, 100)))
    assert set(served(rt, 20)) == {2}
    assert set(served(rt, 20, version=1)) == {1}
    assert set(served(rt, 20, version="stable")) == {1}


def test_a_label_target_follows_the_label(rt):
    rt.traffic.set_policy("m", split(("stable", 100)))
    assert set(served(rt, 5)) == {1}
    rt.set_label("m", "stable", 2)
    assert set(served(rt, 5)) == {2}


def test_a_target_may_be_another_model_with_the_same_signature(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}})
    write_model(tmp_path, "other", {7: {}})
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        rt.traffic.set_policy("m", {"targets": [{"version": 1, "weight": 0}, {"model": "other", "weight": 100}]})
        assert set(served(rt, 5)) == {7}


def test_submit_and_infer_async_route_and_record(rt):
    rt.traffic.set_policy("m", split((1, 0), (2, 100)))
    pending = rt.submit("m", {"INPUT0": X})
    assert pending.wait(30)
    assert version_of(pending.outputs()) == 2

    async def main():
        served_ = await rt.infer_routed_async("m", {"INPUT0": X})
        return served_.model, served_.version, version_of(served_.outputs), version_of(await rt.infer_async("m", {"INPUT0": X}))

    assert asyncio.run(main()) == ("m", 2, 2, 2)
    rows = {r["target"]: r for r in rt.traffic.readout("m")["targets"]}
    assert rows["2"]["requests"] == 3 and rows["1"]["requests"] == 0


def test_policy_changes_under_load_lose_no_request(rt):
    stop, answers, errors = threading.Event(), [], []

    def load():
        while not stop.is_set():
            try:
                answers.append(version_of(rt.infer("m", {"INPUT0": X})))
            except Exception as e:
                errors.append(e)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for i in range(40):
            rt.traffic.set_policy("m", split((1, i % 2 * 100), (2, 100 - i % 2 * 100)))
            time.sleep(0.005)
        rt.traffic.set_policy("m", split((1, 100), (2, 0)))
        settled = len(answers)
        wait_for(lambda: len(answers) > settled + 20)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert errors == [] and set(answers) == {1, 2}
    # Applied at once: after the last change only the (at most 4) requests already routed went to 2.
    assert answers[settled:].count(2) <= 4


def test_a_model_without_a_policy_is_not_routed(rt):
    assert rt.traffic.get_policy("m") is None
    assert set(served(rt, 5)) == {2}  # the default version (the newest)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, error, words",
    [
        (split((1, 90), (2, 5)), InvalidArgumentError, ["adding up to 100", "got 95", "90 + 5"]),
        (split((1, 90), (2, 11)), InvalidArgumentError, ["got 101"]),
        (split((1, 50), (1, 50)), InvalidArgumentError, ["more than once", "'1'"]),
        (split((1, 101)), InvalidArgumentError, ["targets[0].weight", "101"]),
        ({"targets": [{"version": 1, "weight": 100}], "stiky_key": "u"}, InvalidArgumentError, ["stiky_key", "unknown key"]),
        (split((1, 100), baseline="9"), InvalidArgumentError, ["baseline", "'9'"]),
        (split((1, 90), (9, 10)), NotFoundError, ["target '9'", "no version 9"]),
        (split((1, 90), ("canary", 10)), NotFoundError, ["target 'canary'", "no version or label 'canary'"]),
        ({"targets": [{"model": "nope", "weight": 100}]}, NotFoundError, ["nope", "not loaded"]),
    ],
)
def test_invalid_policies_are_rejected_with_clear_errors(rt, policy, error, words):
    with pytest.raises(error) as e:
        rt.traffic.set_policy("m", policy)
    for w in words:
        assert w in str(e.value)
    assert rt.traffic.get_policy("m") is None


def test_a_target_with_another_signature_is_rejected(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}})
    write_model(tmp_path, "odd", {1: {}})
    (tmp_path / "odd" / "config.yaml").write_text(
        (tmp_path / "odd" / "config.yaml").read_text().replace("shape: [4]}", "shape: [8]}", 1))
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        with pytest.raises(InvalidArgumentError, match=r"target 'odd:default' has a different signature.*INPUT0 FP32\[8\]"):
            rt.traffic.set_policy("m", {"targets": [{"version": 1, "weight": 50}, {"model": "odd", "weight": 50}]})


def test_a_target_that_is_not_ready_is_rejected(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}, 2: {}})
    (tmp_path / "m" / "2" / "model.py").write_text("raise RuntimeError('broken')\n")
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        with pytest.raises(UnavailableError, match="version 2, which is FAILED; targets must be READY"):
            rt.traffic.set_policy("m", split((1, 90), (2, 10)))


def test_an_unwritable_state_dir_refuses_the_change(repo, clock, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with Runtime(repo, traffic_clock=clock, state_dir=blocker / "state") as rt:
        with pytest.raises(InternalError, match="cannot save traffic state"):
            rt.traffic.set_policy("m", split((1, 90), (2, 10)))
        assert rt.traffic.get_policy("m") is None


# --- persistence, config, audit -----------------------------------------------------------------


def test_the_policy_survives_a_restart(repo, clock):
    with Runtime(repo, traffic_clock=clock) as rt:
        rt.traffic.set_policy("m", split((1, 30), (2, 70), sticky_key="u"))
        before = {u: served(rt, 1, routing={"u": u})[0] for u in range(50)}
    assert (repo / ".modelserve" / "traffic.json").exists()
    with Runtime(repo, traffic_clock=clock) as rt:
        assert rt.traffic.get_policy("m") == split((1, 30), (2, 70), sticky_key="u")
        assert {u: served(rt, 1, routing={"u": u})[0] for u in range(50)} == before


def test_config_declares_the_initial_policy_and_a_saved_change_wins(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}, 2: {}}, """
        traffic:
          targets: [{version: 1, weight: 0}, {version: 2, weight: 100}]
    """)
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        assert rt.traffic.get_policy("m")["targets"][1] == {"version": 2, "weight": 100}
        rt.traffic.set_policy("m", split((1, 100)))
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        assert rt.traffic.get_policy("m") == split((1, 100))
        rt.traffic.clear_policy("m")
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        assert rt.traffic.get_policy("m") is None  # cleared stays cleared


def test_poll_mode_applies_a_traffic_key_added_to_the_config(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}, 2: {}})
    with Runtime(tmp_path, model_control_mode="poll", poll_interval=3600, traffic_clock=clock) as rt:
        assert rt.traffic.get_policy("m") is None
        write_model(tmp_path, "m", {}, "traffic: {targets: [{version: 1, weight: 100}]}\n")
        rt.repository.poll_once()
        rt.repository.poll_once()  # acted on once the change has settled
        assert rt.traffic.get_policy("m") == split((1, 100))
        assert set(served(rt, 5)) == {1}


def test_a_config_policy_error_names_the_file_and_key(tmp_path):
    from modelserve.config import ConfigError, load_config

    write_model(tmp_path, "m", {1: {}}, "traffic: {targets: [{version: 1, weight: 90}]}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: traffic: expected target weights adding up to 100, got 90"):
        load_config(tmp_path / "m")


def test_validate_checks_where_a_config_policy_points(tmp_path):
    from modelserve.repository import validate_repository

    write_model(tmp_path, "m", {1: {}}, """
        traffic:
          targets: [{version: 1, weight: 50}, {version: 3, weight: 25}, {version: canary, weight: 25}]
          shadows: [{model: nope, percent: 5}]
    """)
    errors = validate_repository(tmp_path)
    assert any("traffic.targets: version 3 has no folder" in e for e in errors)
    assert any("traffic.targets: label 'canary' is not in labels" in e for e in errors)
    assert any("traffic.shadows: model 'nope' is not in the repository" in e for e in errors)


def test_changes_are_audited_with_who_what_and_when(rt, repo):
    rt.traffic.set_policy("m", split((1, 90), (2, 10)), actor="alice")
    rt.traffic.set_policy("m", split((1, 50), (2, 50)), actor="bob")
    rt.traffic.clear_policy("m", actor="carol")
    entries = rt.traffic.audit("m")
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("alice", "policy.set"), ("bob", "policy.set"), ("carol", "policy.clear")]
    assert entries[1]["before"] == split((1, 90), (2, 10)) and entries[1]["after"] == split((1, 50), (2, 50))
    assert all(e["time"].endswith("Z") for e in entries)
    lines = (repo / ".modelserve" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["actor"] for line in lines] == ["alice", "bob", "carol"]


# --- shadows ----------------------------------------------------------------------------------------


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_shadow_outputs_are_compared_with_the_primarys(rt):
    rt.traffic.set_policy("m", {**split((1, 100)), "shadows": [{"version": 2, "percent": 100}]})
    assert set(served(rt, 20)) == {1}
    wait_for(lambda: rt.traffic.readout("m")["shadows"][0]["comparison"]["requests"] == 20)
    (shadow,) = rt.traffic.readout("m")["shadows"]
    assert shadow["target"] == "2" and shadow["requests"] == 20 and shadow["errors"] == 0
    c = shadow["comparison"]
    assert c["agreement_rate"] == 0.0  # CLASS is 1 against 2
    assert c["mean_abs_diff"] == pytest.approx(1.0) and c["max_abs_diff"] == pytest.approx(1.0)
    assert c["dropped"] == 0


def test_a_shadow_that_raises_or_sleeps_never_changes_the_callers_results_and_drops_are_counted(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}, 2: {"fail_every": 1}, 3: {"sleep": 2.0}})
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        rt.traffic._mirror.capacity = 4
        rt.traffic.set_policy("m", {**split((1, 100)), "shadows": [{"version": 2, "percent": 100},
                                                                  {"version": 3, "percent": 100}]})
        for _ in range(40):
            t0 = time.perf_counter()
            out = rt.infer("m", {"INPUT0": X})
            assert time.perf_counter() - t0 < 1.0  # the shadow sleeps 2 s per request
            assert version_of(out) == 1
            np.testing.assert_array_equal(out["OUTPUT0"], X + 1)
        wait_for(lambda: {s["target"]: s for s in rt.traffic.readout("m")["shadows"]}["2"]["errors"]
                 + {s["target"]: s for s in rt.traffic.readout("m")["shadows"]}["2"]["comparison"]["dropped"] == 40)
        shadows = {s["target"]: s for s in rt.traffic.readout("m")["shadows"]}
        assert shadows["2"]["error_rate"] == 1.0
        # Version 3 holds its 4 workers for 2 s: most of its 40 mirrors found the queue full.
        assert shadows["3"]["comparison"]["dropped"] >= 20
        rows = {r["target"]: r for r in rt.traffic.readout("m")["targets"]}
        assert rows["1"]["requests"] == 40 and rows["1"]["errors"] == 0


def test_compare_outputs_counts_a_differently_shaped_output_as_disagreement():
    c = compare_outputs({"A": np.array([1, 2]), "F": np.zeros(3)}, {"A": np.array([1, 3]), "F": np.ones(2)})
    assert c["compared"] == 2 + 3 and c["agreed"] == 1 and c["mismatched"] == ["F"]


# --- readout ----------------------------------------------------------------------------------------


def test_readout_compares_each_target_with_the_baseline(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}, 2: {"fail_every": 5}})
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        rt.traffic.set_policy("m", split((1, 50), (2, 50)))
        for _ in range(1000):
            try:
                rt.infer("m", {"INPUT0": X})
            except Exception:
                pass
        out = rt.traffic.readout("m")
    assert out["baseline"] == "1"
    base, cand = out["targets"]
    assert base["baseline"] and "vs_baseline" not in base and base["error_rate"] == 0
    assert cand["error_rate"] == pytest.approx(0.2, abs=0.01)
    diff = cand["vs_baseline"]["error_rate"]
    lo, hi = diff["ci95"]
    assert diff["significant"] and 0.1 < lo < diff["diff"] < hi < 0.3
    for key in ("mean_ms", "p50_ms", "p99_ms"):
        assert len(cand["vs_baseline"]["latency"][key]["ci95"]) == 2
    assert base["p50_ms"] > 0 and base["p99_ms"] >= base["p50_ms"]


def test_error_rate_interval_is_not_degenerate_at_zero_errors():
    d = error_rate_diff(100, 0, 100, 0)
    assert d["diff"] == 0 and d["ci95"][0] < 0 < d["ci95"][1] and not d["significant"]


# --- rollouts ---------------------------------------------------------------------------------------

GATES = {"error_rate": {"margin": 0.05}, "p99_latency": {"margin": 1.0, "slack_ms": 200}}


def rollout_spec(**kw):
    return {"candidate": {"version": 2}, "steps": [20, 50, 100], "step_interval_s": 10, "window_s": 60,
            "min_requests": 20, "gates": GATES, **kw}


def send(rt, n, threads=1):
    """``n`` requests; returns (versions answered, errors)."""
    answers, errors, lock = [], [], threading.Lock()

    def run(k):
        for _ in range(k):
            try:
                v = version_of(rt.infer("m", {"INPUT0": X}))
                with lock:
                    answers.append(v)
            except Exception as e:
                with lock:
                    errors.append(e)

    workers = [threading.Thread(target=run, args=(n // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return answers, errors


def send_until_each_answers(rt, versions, at_least=30, batch=50, most=5000):
    """Sends batches of requests until every version in ``versions`` has answered ``at_least`` of
    them, so a gate's minimum number of requests is met whatever the random split drew."""
    seen = collections.Counter()
    while any(seen[v] < at_least for v in versions):
        assert sum(seen.values()) < most, f"after {most} requests only {dict(seen)} answered"
        answers, errors = send(rt, batch)
        assert not errors, errors[:3]
        seen.update(answers)
    return seen


def test_a_healthy_candidate_is_promoted_through_every_step(rt, clock):
    status = rt.traffic.start_rollout("m", rollout_spec(), actor="ci")
    assert status["baseline"] == "stable" and status["weight"] == 20
    weights = []
    for _ in range(3):
        weights.append(rt.traffic.rollout("m")["weight"])
        send_until_each_answers(rt, [2] if weights[-1] == 100 else [1, 2])
        rt.traffic.tick()  # the step interval has not passed: no move
        assert rt.traffic.rollout("m")["weight"] == weights[-1]
        clock.advance(10)
        rt.traffic.tick()
    assert weights == [20, 50, 100]
    status = rt.traffic.rollout("m")
    assert status["state"] == "PROMOTED" and status["verdict"]["stable"] == 2
    assert rt.model_versions("m")["labels"]["stable"] == 2
    assert rt.model_ready("m", 1)  # the old version stays loaded for rollback
    assert rt.traffic.get_policy("m") == {"targets": [{"version": "stable", "weight": 100}]}
    assert set(served(rt, 10)) == {2}
    actions = [e["action"] for e in rt.traffic.audit("m")]
    assert actions == ["rollout.start", "rollout.advance", "rollout.advance", "rollout.promote"]


def test_a_rollout_judges_only_what_happened_since_it_began(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}, 2: {"fail_every": 2}}, "labels: {stable: 1}\n")
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        rt.traffic.set_policy("m", split((1, 50), (2, 50)))
        send(rt, 200)  # version 2 fails half of these, before the rollout
        rt.traffic.clear_policy("m")
        rt.traffic.start_rollout("m", rollout_spec())
        rt.traffic.tick()
        status = rt.traffic.rollout("m")
        assert status["state"] == "RUNNING" and {g["verdict"] for g in status["gates"]} == {"wait"}


def test_a_rollout_waits_for_the_minimum_number_of_requests(rt, clock):
    rt.traffic.start_rollout("m", rollout_spec(min_requests=1000))
    send(rt, 50)
    clock.advance(100)
    rt.traffic.tick()
    status = rt.traffic.rollout("m")
    assert status["state"] == "RUNNING" and status["weight"] == 20
    assert {g["verdict"] for g in status["gates"]} == {"wait"}


def run_until_rolled_back(rt, clock, batches=20, threads=1):
    """Sends batches of requests, ticking after each, until the rollout rolls back; the step
    interval never passes. Returns the errors callers saw before and after the rollback."""
    before = []
    for _ in range(batches):
        answers, errors = send(rt, 50, threads)
        before += errors
        clock.advance(0.1)
        rt.traffic.tick()
        if rt.traffic.rollout("m")["state"] == "ROLLED_BACK":
            break
    answers, after = send(rt, 100, threads)
    return before, after, answers


def test_a_candidate_failing_a_fifth_of_its_requests_is_rolled_back_before_the_next_step(tmp_path, clock):
    write_model(tmp_path, "m", {1: {}, 2: {"fail_every": 5}}, "labels: {stable: 1}\n")
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        rt.traffic.start_rollout("m", rollout_spec())
        before, after, answers = run_until_rolled_back(rt, clock)
        status = rt.traffic.rollout("m")
        assert status["state"] == "ROLLED_BACK" and status["step"] == 0
        verdict = status["verdict"]
        assert verdict["gate"] == "error_rate" and verdict["figures"]["candidate"] > 0.05 and verdict["time"]
        # Callers saw only the candidate's own failures, and none once it was rolled back.
        assert before and all("injected failure" in str(e) for e in before)
        rows = {r["target"]: r for r in rt.traffic.readout("m")["targets"]}
        assert rows["stable"]["errors"] == 0 and rows["2"]["errors"] == len(before)
        assert after == [] and set(answers) == {1}
        # No policy before: the baseline takes everything, the candidate stays listed at 0.
        assert rt.traffic.get_policy("m") == {"targets": [{"version": "stable", "weight": 100},
                                                          {"version": 2, "weight": 0}], "baseline": "stable"}
        assert rt.model_versions("m")["labels"]["stable"] == 1


def test_a_candidate_ten_times_slower_is_rolled_back_before_the_next_step(tmp_path, clock):
    write_model(tmp_path, "m", {1: {"sleep": 0.01}, 2: {"sleep": 0.1}}, "labels: {stable: 1}\n")
    with Runtime(tmp_path, traffic_clock=clock) as rt:
        gates = {"error_rate": {"margin": 0.05}, "p99_latency": {"margin": 1.0, "slack_ms": 20}}
        rt.traffic.start_rollout("m", rollout_spec(gates=gates))
        # p99 limit: twice the baseline's (~10 ms) plus 20 ms; the candidate never answers under 100 ms.
        before, after, answers = run_until_rolled_back(rt, clock)
        status = rt.traffic.rollout("m")
        assert status["state"] == "ROLLED_BACK" and status["step"] == 0
        figures = status["verdict"]["figures"]
        assert status["verdict"]["gate"] == "p99_latency" and figures["candidate_ms"] > figures["limit_ms"]
        assert before == [] and after == [] and set(answers) == {1}


def test_manual_pause_resume_promote_and_abort(rt, clock):
    rt.traffic.set_policy("m", split((1, 100), sticky_key="user"))
    rt.traffic.start_rollout("m", rollout_spec())
    with pytest.raises(InvalidArgumentError, match="while a rollout of 2 is RUNNING"):
        rt.traffic.set_policy("m", split((1, 100)))
    assert rt.traffic.get_policy("m")["sticky_key"] == "user"  # carried over
    rt.traffic.pause_rollout("m", actor="ops")
    send(rt, 150)
    clock.advance(30)
    rt.traffic.tick()
    assert rt.traffic.rollout("m")["state"] == "PAUSED" and rt.traffic.rollout("m")["weight"] == 20
    rt.traffic.resume_rollout("m", actor="ops")
    rt.traffic.tick()  # paused time does not count towards the step interval
    assert rt.traffic.rollout("m")["weight"] == 20
    rt.traffic.abort_rollout("m", actor="ops")
    assert rt.traffic.rollout("m")["state"] == "ABORTED"
    assert rt.traffic.get_policy("m") == split((1, 100), sticky_key="user")
    with pytest.raises(InvalidArgumentError, match="it is ABORTED"):
        rt.traffic.promote_rollout("m")
    rt.traffic.start_rollout("m", rollout_spec())
    assert rt.traffic.promote_rollout("m", actor="ops")["state"] == "PROMOTED"
    assert rt.model_versions("m")["labels"]["stable"] == 2
    assert rt.traffic.get_policy("m")["targets"] == [{"version": "stable", "weight": 100}]


def test_a_rollout_survives_a_restart(repo, clock):
    with Runtime(repo, traffic_clock=clock) as rt:
        rt.traffic.start_rollout("m", rollout_spec())
        send_until_each_answers(rt, [1, 2])
        clock.advance(10)
        rt.traffic.tick()
        assert rt.traffic.rollout("m")["weight"] == 50
    with Runtime(repo, traffic_clock=clock) as rt:
        status = rt.traffic.rollout("m")
        assert status["state"] == "RUNNING" and status["weight"] == 50
        assert [t["weight"] for t in rt.traffic.get_policy("m")["targets"]] == [50, 50]


def test_a_promotions_label_move_survives_a_restart(repo, clock):
    with Runtime(repo, traffic_clock=clock) as rt:
        rt.traffic.start_rollout("m", rollout_spec())
        rt.traffic.promote_rollout("m")
        assert rt.model_versions("m")["labels"]["stable"] == 2
    with Runtime(repo, traffic_clock=clock) as rt:  # config.yaml still says stable: 1
        assert rt.model_versions("m")["labels"]["stable"] == 2
        assert set(served(rt, 5)) == {2}


def test_invalid_rollouts_are_rejected(rt):
    with pytest.raises(InvalidArgumentError, match=r"steps: expected strictly increasing percentages ending at 100"):
        rt.traffic.start_rollout("m", rollout_spec(steps=[50, 20]))
    with pytest.raises(InvalidArgumentError, match="same version"):
        rt.traffic.start_rollout("m", rollout_spec(candidate={"version": 1}))
    with pytest.raises(NotFoundError, match="candidate '5'"):
        rt.traffic.start_rollout("m", rollout_spec(candidate={"version": 5}))
    with pytest.raises(NotFoundError, match="no rollout"):
        rt.traffic.pause_rollout("m")


def test_a_rollout_names_its_targets_by_id_as_the_cli_does():
    from modelserve.traffic import parse_rollout

    spec = parse_rollout({"candidate": 2, "baseline": "stable"})
    assert (spec.candidate.model, spec.candidate.version) == (None, 2)
    assert (spec.baseline.model, spec.baseline.version) == (None, "stable")
    other = parse_rollout({"candidate": "other:3"}).candidate
    assert (other.model, other.version) == ("other", 3)
    with pytest.raises(InvalidArgumentError, match=r"candidate: .*expected \[model:\]version") as bad:
        parse_rollout({"candidate": "other:"})
    assert "got" in str(bad.value) and str(bad.value).count(", got") == 1


def test_the_divergence_gate_rolls_back_a_candidate_whose_outputs_differ(rt, clock):
    spec = rollout_spec(gates={**GATES, "divergence": {"shadow_percent": 100, "max_disagreement": 0.1}})
    rt.traffic.start_rollout("m", spec)
    for _ in range(20):
        send(rt, 20)
        wait_for(lambda: rt.traffic._mirror.queued() == 0)
        time.sleep(0.05)
        rt.traffic.tick()
        if rt.traffic.rollout("m")["state"] == "ROLLED_BACK":
            break
    verdict = rt.traffic.rollout("m")["verdict"]
    assert verdict["gate"] == "divergence" and verdict["figures"]["disagreement"] == 1.0


def test_parse_policy_accepts_version_strings_as_numbers():
    assert parse_policy(split(("2", 100))).targets[0].version == 2
