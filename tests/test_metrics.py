"""``GET /metrics`` of a real server on free ports: series of a shadow, a target, an endpoint or a
version that no longer exists are gone at the next scrape, and the standard process metrics
(prometheus_client's process, platform and gc collectors) are there."""

import time
import urllib.request

import pytest
from conftest import LoopThread
from modelserve.server.app import Server
from modelserve.server.common import ServerOptions
from modelserve.server.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families
from traffic_models import X, write_model

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "m", {1: {}, 2: {}, 3: {}})
    # One version at a time, none kept: loading version 2 unloads version 1.
    write_model(repo, "u", {1: {}}, "version_policy: {latest: 1}\nkeep_previous_versions: 0\n")
    loop = LoopThread("metrics-test")
    s = Server(repo, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0),
               model_control_mode="explicit", load_models=["m", "u"])
    loop.run(s.start())
    s.repo = repo
    yield s
    loop.run(s.shutdown())
    loop.close()


@pytest.fixture
def clean(server):
    """Every test starts without a policy on ``m``."""
    if server.runtime.traffic.get_policy("m") is not None:
        server.runtime.traffic.clear_policy("m")
    return server


def scrape(server) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of ``/metrics`` as (name, labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def series(samples, prefix: str, **labels) -> list[tuple[str, dict[str, str], float]]:
    """The samples whose name starts with ``prefix`` and that carry every label given."""
    return [s for s in samples if s[0].startswith(prefix) and all(s[1].get(k) == v for k, v in labels.items())]


def infer(server, n: int) -> None:
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}") as c:
        for _ in range(n):
            inp = httpclient.InferInput("INPUT0", [4], "FP32")
            inp.set_data_from_numpy(X)
            c.infer("m", [inp])


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_a_removed_shadows_series_are_gone_at_the_next_scrape(clean):
    traffic = clean.runtime.traffic
    traffic.set_policy("m", {"targets": [{"version": 1, "weight": 100}], "shadows": [{"version": 2, "percent": 100}]})
    infer(clean, 5)
    wait_for(lambda: series(scrape(clean), "modelserve_shadow_agreement_ratio", endpoint="m", target="2"),
             "the shadow's comparison")
    samples = scrape(clean)
    assert series(samples, "modelserve_shadow_requests_total", endpoint="m", target="2", outcome="success")
    assert series(samples, "modelserve_shadow_dropped_total", endpoint="m", target="2")

    traffic.set_policy("m", {"targets": [{"version": 1, "weight": 100}]})
    assert series(scrape(clean), "modelserve_shadow_", target="2") == []


def test_a_target_removed_from_the_split_has_no_series_left(clean):
    traffic = clean.runtime.traffic
    traffic.set_policy("m", {"targets": [{"version": 1, "weight": 50}, {"version": 3, "weight": 50}]})
    infer(clean, 20)
    samples = scrape(clean)
    assert series(samples, "modelserve_traffic_requests_total", endpoint="m", target="3")
    assert series(samples, "modelserve_traffic_weight_percent", endpoint="m", target="3")

    traffic.set_policy("m", {"targets": [{"version": 1, "weight": 100}]})
    samples = scrape(clean)
    assert series(samples, "modelserve_traffic_", endpoint="m", target="3") == []
    assert series(samples, "modelserve_traffic_requests_total", endpoint="m", target="1", outcome="success")


def test_a_cleared_policy_leaves_no_series_of_its_endpoint(clean):
    traffic = clean.runtime.traffic
    traffic.set_policy("m", {"targets": [{"version": 1, "weight": 100}], "shadows": [{"version": 2, "percent": 100}]})
    infer(clean, 5)
    assert series(scrape(clean), "modelserve_traffic_requests_total", endpoint="m")

    traffic.clear_policy("m")
    samples = scrape(clean)
    assert [s for s in samples if s[1].get("endpoint") == "m"] == []
    # What the versions themselves counted is the core's, and stays.
    assert series(samples, "modelserve_requests_total", model="m", version="1", outcome="success")


def test_a_finished_rollout_keeps_its_state_series_while_its_endpoint_has_a_policy(clean):
    traffic = clean.runtime.traffic
    traffic.start_rollout("m", {"candidate": {"version": 2}, "baseline": {"version": 1}, "steps": [50, 100],
                                "step_interval_s": 600})
    traffic.abort_rollout("m")
    samples = scrape(clean)
    assert ("modelserve_rollout_state", {"endpoint": "m", "target": "2", "state": "ABORTED"}, 1.0) in samples

    traffic.clear_policy("m")
    assert series(scrape(clean), "modelserve_rollout_", endpoint="m") == []


def test_an_unloaded_versions_series_are_gone_at_the_next_scrape(server):
    samples = scrape(server)
    assert ("modelserve_model_state", {"model": "u", "version": "1", "state": "READY"}, 1.0) in samples
    write_model(server.repo, "u", {2: {}}, "version_policy: {latest: 1}\nkeep_previous_versions: 0\n")
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}") as c:
        c.load_model("u")
    wait_for(lambda: server.runtime.model_versions("u")["versions"][1]["state"] == "UNLOADED", "version 1 unloaded")
    samples = scrape(server)
    assert [s for s in samples if s[1].get("model") == "u" and s[1].get("version") == "1"] == []
    assert ("modelserve_model_state", {"model": "u", "version": "2", "state": "READY"}, 1.0) in samples


def test_process_and_python_metrics_are_exported(server):
    names = {s[0] for s in scrape(server)}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "python_info",
                 "python_gc_collections_total"):
        assert name in names


def test_two_metrics_registries_in_one_process_both_export_process_metrics(server):
    body, _ = Metrics(server.runtime).render()
    assert b"process_resident_memory_bytes" in body and b"python_info" in body
    assert "process_resident_memory_bytes" in {s[0] for s in scrape(server)}
