"""Traffic management through a real server on free ports: the HTTP routes, the gRPC
``modelserve.v1.TrafficService``, inference that follows a policy (tritonclient, sticky keys in
parameters and headers), metrics, labels and rollback over the wire, and the ``modelserve
traffic`` / ``rollout`` / ``model`` commands."""

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from conftest import LoopThread
from modelserve._proto import modelserve_pb2 as pb
from modelserve._proto import modelserve_pb2_grpc as pb_grpc
from modelserve.server.app import Server
from modelserve.server.common import ServerOptions
from traffic_models import X, write_model

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "m", {1: {}, 2: {}, 3: {"fail_every": 1}}, "labels: {stable: 1}\n")
    (repo / "m" / "4").mkdir()
    (repo / "m" / "4" / "model.py").write_text("raise RuntimeError('broken version')\n")
    loop = LoopThread("traffic-server-test")
    s = Server(repo, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0))
    loop.run(s.start())
    yield s
    loop.run(s.shutdown())
    loop.close()


@pytest.fixture
def clean(server):
    """Every test starts without a policy or a running rollout, with ``stable`` at version 1 and
    the default at version 3."""
    traffic = server.runtime.traffic
    r = traffic.rollout("m")
    if r is not None and r["state"] in ("RUNNING", "PAUSED"):
        traffic.abort_rollout("m")
    if traffic.get_policy("m") is not None:
        traffic.clear_policy("m")
    routing = server.runtime.model_versions("m")
    if routing["labels"].get("stable") != 1:
        traffic.set_label("m", "stable", 1, actor="test-cleanup")
    if routing["default"] != 3:
        traffic.rollback("m", 3, actor="test-cleanup")
    return server


def call(server, method, path, body=None, headers=None, raw=None):
    """(status, JSON body) of an HTTP request to the server (``raw``: the body's bytes as they are)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def split(*weights, **extra):
    return {"targets": [{"version": v, "weight": w} for v, w in weights], **extra}


def http_infer(client, **kw):
    inp = httpclient.InferInput("INPUT0", [4], "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer("m", [inp], **kw)
    return int(result.get_response()["model_version"]), int(result.as_numpy("CLASS")[0])


def grpc_infer(client, **kw):
    inp = grpcclient.InferInput("INPUT0", [4], "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer("m", [inp], **kw)
    return int(result.get_response().model_version), int(result.as_numpy("CLASS")[0])


# --- HTTP ---------------------------------------------------------------------------------------


def test_http_sets_gets_and_clears_a_policy_with_an_audited_actor(clean):
    status, body = call(clean, "PUT", "/v2/models/m/traffic", split((1, 70), (2, 30)),
                        {"X-Modelserve-Actor": "alice"})
    assert status == 200 and body == {"endpoint": "m", "policy": split((1, 70), (2, 30))}
    assert call(clean, "GET", "/v2/models/m/traffic") == (200, {"endpoint": "m", "policy": split((1, 70), (2, 30))})
    assert call(clean, "DELETE", "/v2/models/m/traffic")[0] == 200
    assert call(clean, "GET", "/v2/models/m/traffic") == (200, {"endpoint": "m", "policy": None})
    status, body = call(clean, "GET", "/v2/models/m/traffic/audit?limit=2")
    assert [(e["actor"], e["action"]) for e in body["entries"]] == [("alice", "policy.set"), ("http:127.0.0.1", "policy.clear")]
    assert call(clean, "GET", "/v2/traffic/audit")[1]["entries"][-1]["action"] == "policy.clear"


@pytest.mark.parametrize("policy, status, words", [
    (split((1, 90), (2, 5)), 400, "weights adding up to 100, got 95"),
    (split((1, 90), (9, 10)), 404, "no version 9"),
    (split((1, 90), (4, 10)), 503, "targets must be READY"),
    ({"targets": [{"version": 1, "weight": 100}], "sticky": "u"}, 400, "sticky: unknown key"),
])
def test_http_rejects_invalid_policies_with_the_status_table(clean, policy, status, words):
    code, body = call(clean, "PUT", "/v2/models/m/traffic", policy)
    assert code == status and words in body["error"]
    assert call(clean, "GET", "/v2/models/nope/traffic")[0] == 404


def test_http_inference_follows_the_policy_and_reports_the_version_that_ran(clean):
    call(clean, "PUT", "/v2/models/m/traffic", split((1, 0), (2, 100)))
    with httpclient.InferenceServerClient(f"127.0.0.1:{clean.http_port}") as c:
        assert {http_infer(c) for _ in range(10)} == {(2, 2)}
        assert http_infer(c, model_version="1") == (1, 1)  # an explicit version bypasses the split


def test_http_sticky_key_from_a_parameter_or_a_header(clean):
    call(clean, "PUT", "/v2/models/m/traffic", split((1, 50), (2, 50), sticky_key="user_id"))
    with httpclient.InferenceServerClient(f"127.0.0.1:{clean.http_port}") as c:
        by_param = {u: http_infer(c, parameters={"user_id": str(u)})[0] for u in range(40)}
        assert set(by_param.values()) == {1, 2}
        for u in range(40):
            assert http_infer(c, parameters={"user_id": str(u)})[0] == by_param[u]
            assert http_infer(c, headers={"user_id": str(u)})[0] == by_param[u]


def test_http_readout_and_metrics_are_labelled_by_endpoint_and_target(clean):
    call(clean, "PUT", "/v2/models/m/traffic", split((1, 50), (2, 50)))
    with httpclient.InferenceServerClient(f"127.0.0.1:{clean.http_port}") as c:
        for _ in range(40):
            http_infer(c)
    status, readout = call(clean, "GET", "/v2/models/m/traffic/readout?window_s=600")
    assert status == 200 and readout["baseline"] == "1"
    rows = {r["target"]: r for r in readout["targets"]}
    assert rows["1"]["requests"] + rows["2"]["requests"] >= 40 and "vs_baseline" in rows["2"]
    assert call(clean, "GET", "/v2/models/m/traffic/readout?window_s=x")[0] == 400
    with urllib.request.urlopen(f"http://127.0.0.1:{clean.http_port}/metrics") as r:
        text = r.read().decode()
    assert 'modelserve_traffic_requests_total{endpoint="m",outcome="success",target="2"}' in text
    assert 'modelserve_traffic_weight_percent{endpoint="m",target="1"} 50.0' in text
    assert 'modelserve_traffic_request_duration_seconds_bucket{endpoint="m",le="+Inf",target="1"}' in text


def test_http_requests_are_mirrored_to_a_shadow_and_compared(clean):
    call(clean, "PUT", "/v2/models/m/traffic", {**split((1, 100)), "shadows": [{"version": 2, "percent": 100}]})
    with httpclient.InferenceServerClient(f"127.0.0.1:{clean.http_port}") as c:
        assert {http_infer(c) for _ in range(10)} == {(1, 1)}  # callers only see the primary
    deadline = time.monotonic() + 30
    while True:
        (shadow,) = call(clean, "GET", "/v2/models/m/traffic/readout")[1]["shadows"]
        if shadow["comparison"]["requests"] >= 10 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert shadow["target"] == "2" and shadow["comparison"]["agreement_rate"] == 0.0
    assert shadow["comparison"]["mean_abs_diff"] == 1.0



def test_grpc_requests_are_mirrored_to_a_shadow_and_compared(clean):
    # A shadowed endpoint takes the gRPC frontend's Python way (the comparison needs outputs).
    call(clean, "PUT", "/v2/models/m/traffic", {**split((1, 100)), "shadows": [{"version": 2, "percent": 100}]})
    with grpcclient.InferenceServerClient(f"127.0.0.1:{clean.grpc_port}") as c:
        assert {grpc_infer(c) for _ in range(10)} == {(1, 1)}
    deadline = time.monotonic() + 30
    while True:
        (shadow,) = call(clean, "GET", "/v2/models/m/traffic/readout")[1]["shadows"]
        if shadow["comparison"]["requests"] >= 10 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert shadow["target"] == "2" and shadow["comparison"]["mean_abs_diff"] == 1.0


def test_grpc_requests_follow_a_split_on_the_native_path_and_are_counted(clean):
    call(clean, "PUT", "/v2/models/m/traffic", split((1, 50), (2, 50)))

    def counted():
        rows = call(clean, "GET", "/v2/models/m/traffic/readout")[1]["targets"]
        return sum(r["requests"] for r in rows if r["target"] in ("1", "2"))

    before = counted()  # targets keep their statistics across policy changes
    with grpcclient.InferenceServerClient(f"127.0.0.1:{clean.grpc_port}") as c:
        answers = {grpc_infer(c) for _ in range(60)}
    assert answers == {(1, 1), (2, 2)}  # P(one version only) = 2**-59
    assert counted() - before == 60

def test_http_rollout_rolls_back_a_failing_candidate_on_its_own(clean):
    spec = {"candidate": {"version": 3}, "steps": [50, 100], "step_interval_s": 60, "min_requests": 5}
    status, body = call(clean, "POST", "/v2/models/m/rollout", spec, {"X-Modelserve-Actor": "ci"})
    assert status == 200 and body["state"] == "RUNNING" and body["weight"] == 50
    assert call(clean, "POST", "/v2/models/m/rollout", spec)[0] == 400  # one at a time
    with httpclient.InferenceServerClient(f"127.0.0.1:{clean.http_port}") as c:
        deadline = time.monotonic() + 30
        while call(clean, "GET", "/v2/models/m/rollout")[1]["state"] == "RUNNING":
            assert time.monotonic() < deadline
            try:
                http_infer(c)
            except Exception:
                pass
        assert {http_infer(c) for _ in range(10)} == {(1, 1)}  # all on the baseline now
    r = call(clean, "GET", "/v2/models/m/rollout")[1]
    assert r["state"] == "ROLLED_BACK" and r["verdict"]["gate"] == "error_rate"
    with urllib.request.urlopen(f"http://127.0.0.1:{clean.http_port}/metrics") as response:
        text = response.read().decode()
    assert 'modelserve_rollout_state{endpoint="m",state="ROLLED_BACK",target="3"} 1.0' in text
    assert 'modelserve_rollout_weight_percent{endpoint="m",target="3"} 0.0' in text
    assert 'modelserve_traffic_requests_total{endpoint="m",outcome="internal",target="3"}' in text


def test_http_rollout_actions(clean):
    spec = {"candidate": {"version": 2}, "steps": [10, 100], "step_interval_s": 600}
    assert call(clean, "POST", "/v2/models/m/rollout", spec)[0] == 200
    assert call(clean, "POST", "/v2/models/m/rollout/pause")[1]["state"] == "PAUSED"
    assert call(clean, "POST", "/v2/models/m/rollout/resume")[1]["state"] == "RUNNING"
    assert call(clean, "POST", "/v2/models/m/rollout/jump")[0] == 404
    assert call(clean, "POST", "/v2/models/m/rollout/abort")[1]["state"] == "ABORTED"
    assert call(clean, "POST", "/v2/models/m/rollout/abort")[0] == 400


def test_http_label_route_points_a_label_at_a_version_and_audits_it(clean):
    status, body = call(clean, "POST", "/v2/models/m/labels/canary", {"version": 2}, {"X-Modelserve-Actor": "alice"})
    assert status == 200 and body["model"] == "m" and body["label"] == "canary" and body["after"] == 2
    with httpclient.InferenceServerClient(f"127.0.0.1:{clean.http_port}") as c:
        assert http_infer(c, model_version="canary") == (2, 2)
    status, body = call(clean, "POST", "/v2/models/m/labels/canary", {"version": 1})
    assert status == 200 and (body["before"], body["after"]) == (2, 1)
    (entry,) = call(clean, "GET", "/v2/models/m/traffic/audit?limit=1")[1]["entries"]
    assert (entry["actor"], entry["action"]) == ("http:127.0.0.1", "label")
    assert entry["before"] == {"label": "canary", "version": 2} and entry["after"] == {"label": "canary", "version": 1}


def test_http_rollback_undoes_a_promotion(clean):
    spec = {"candidate": {"version": 2}, "steps": [50, 100], "step_interval_s": 600}
    assert call(clean, "POST", "/v2/models/m/rollout", spec)[0] == 200
    assert call(clean, "POST", "/v2/models/m/rollout/promote")[1]["state"] == "PROMOTED"
    with httpclient.InferenceServerClient(f"127.0.0.1:{clean.http_port}") as c:
        assert {http_infer(c) for _ in range(5)} == {(2, 2)}  # the policy routes 100% to stable = 2
        status, body = call(clean, "POST", "/v2/models/m/rollback", {"label": "stable"}, {"X-Modelserve-Actor": "oncall"})
        assert status == 200 and body == {"model": "m", "label": "stable", "before": 2, "after": 1}
        assert {http_infer(c) for _ in range(5)} == {(1, 1)}  # at once, without touching the policy
    (entry,) = call(clean, "GET", "/v2/models/m/traffic/audit?limit=1")[1]["entries"]
    assert (entry["actor"], entry["action"]) == ("oncall", "rollback")
    assert entry["before"] == {"label": "stable", "version": 2} and entry["after"] == {"label": "stable", "version": 1}
    assert clean.runtime.traffic.store.load()["m"]["labels"]["stable"] == 1  # what a restart re-applies


def test_http_rollback_of_the_default_version_goes_to_the_newest_older_ready_version(clean):
    status, body = call(clean, "POST", "/v2/models/m/rollback", {})
    assert status == 200 and body == {"model": "m", "label": None, "before": 3, "after": 2}
    assert clean.runtime.model_versions("m")["default"] == 2
    assert call(clean, "POST", "/v2/models/m/rollback", {"version": 3})[1]["after"] == 3


@pytest.mark.parametrize("path, body, status, words", [
    ("/v2/models/m/labels/stable", {"version": 9}, 404, "model 'm' has no version 9"),
    ("/v2/models/m/labels/stable", {"version": 4}, 503, "version 4: it is FAILED"),
    ("/v2/models/m/labels/stable", {}, 400, "needs 'version'"),
    ("/v2/models/m/labels/stable", {"version": "two"}, 400, "'version' must be a positive integer (a version number), got 'two'"),
    ("/v2/models/m/labels/stable", {"version": 1, "versoin": 2}, 400, "unknown field 'versoin'"),
    ("/v2/models/m/labels/latest", {"version": 1}, 400, "'latest' cannot be a label"),
    ("/v2/models/nope/labels/stable", {"version": 1}, 404, "nope"),
    ("/v2/models/m/rollback", {"label": "gold"}, 404, "model 'm' has no label 'gold'"),
    ("/v2/models/m/rollback", {"version": 9}, 404, "model 'm' has no version 9"),
    ("/v2/models/m/rollback", {"label": "stable", "version": 4}, 503, "it is FAILED"),
    ("/v2/models/m/rollback", {"lable": "stable"}, 400, "unknown field 'lable'"),
    ("/v2/models/m/rollback", {"label": 7}, 400, "'label' must be a non-empty string"),
])
def test_http_label_and_rollback_errors_use_the_status_table(clean, path, body, status, words):
    code, reply = call(clean, "POST", path, body)
    assert code == status and words in reply["error"]
    assert clean.runtime.model_versions("m")["labels"]["stable"] == 1  # nothing moved
    assert (clean.runtime.traffic.store.load().get("m", {}).get("labels") or {}).get("stable", 1) == 1  # nor saved


def test_http_label_moves_are_refused_while_a_rollout_runs(clean):
    spec = {"candidate": {"version": 2}, "steps": [10, 100], "step_interval_s": 600}
    assert call(clean, "POST", "/v2/models/m/rollout", spec)[0] == 200
    code, reply = call(clean, "POST", "/v2/models/m/labels/stable", {"version": 2})
    assert code == 400 and "cannot move label 'stable' while a rollout of 2 is RUNNING" in reply["error"]
    assert call(clean, "POST", "/v2/models/m/rollback", {"label": "stable"})[0] == 400


@contextlib.contextmanager
def serving(repo, **options):
    """A server of ``repo`` on free ports for the length of the block."""
    loop = LoopThread("traffic-restart-test")
    s = Server(repo, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0, **options))
    try:
        loop.run(s.start())
        yield s
    finally:
        loop.run(s.shutdown())
        loop.close()


def test_a_promotion_undone_over_the_wire_stays_undone_after_a_restart(tmp_path):
    write_model(tmp_path, "m", {1: {}, 2: {}}, "labels: {stable: 1}\n")
    with serving(tmp_path) as s:
        assert call(s, "POST", "/v2/models/m/rollout", {"candidate": {"version": 2}})[0] == 200
        assert call(s, "POST", "/v2/models/m/rollout/promote")[0] == 200
        assert s.runtime.model_versions("m")["labels"]["stable"] == 2
        assert call(s, "POST", "/v2/models/m/rollback", {"label": "stable"})[1]["after"] == 1
    with serving(tmp_path) as s:  # the saved promotion's label move is replaced, not re-applied
        assert s.runtime.model_versions("m")["labels"]["stable"] == 1


def test_a_label_moved_over_the_wire_leaves_the_config_traffic_key_in_force(tmp_path):
    write_model(tmp_path, "m", {1: {}, 2: {}}, "traffic: {targets: [{version: 1, weight: 60}, {version: 2, weight: 40}]}\n")
    with serving(tmp_path) as s:
        assert call(s, "POST", "/v2/models/m/labels/canary", {"version": 2})[0] == 200
    with serving(tmp_path) as s:
        assert s.runtime.model_versions("m")["labels"]["canary"] == 2
        assert s.runtime.traffic.get_policy("m") == split((1, 60), (2, 40))


# --- gRPC ---------------------------------------------------------------------------------------


@pytest.fixture
def stub(clean):
    with grpc.insecure_channel(f"127.0.0.1:{clean.grpc_port}") as channel:
        yield pb_grpc.TrafficServiceStub(channel)


def test_grpc_traffic_service(stub, clean):
    reply = stub.SetPolicy(pb.SetPolicyRequest(model="m", actor="bob", policy_json=json.dumps(split((1, 20), (2, 80)))))
    assert json.loads(reply.json)["policy"] == split((1, 20), (2, 80))
    assert json.loads(stub.GetPolicy(pb.EndpointRequest(model="m")).json)["policy"] == split((1, 20), (2, 80))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{clean.grpc_port}") as c:
        answers = [grpc_infer(c) for _ in range(30)]
    assert {v for v, cls in answers} <= {1, 2} and all(v == cls for v, cls in answers)
    readout = json.loads(stub.GetReadout(pb.ReadoutRequest(model="m")).json)
    assert sum(r["requests"] for r in readout["targets"]) >= 30
    entries = [json.loads(e) for e in stub.ListAudit(pb.AuditRequest(model="m", limit=1)).entries_json]
    assert [(e["actor"], e["action"]) for e in entries] == [("bob", "policy.set")]
    stub.ClearPolicy(pb.EndpointRequest(model="m"))
    assert json.loads(stub.GetPolicy(pb.EndpointRequest(model="m")).json)["policy"] is None


def test_grpc_errors_use_the_status_table(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.SetPolicy(pb.SetPolicyRequest(model="m", policy_json=json.dumps(split((1, 99)))))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "got 99" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.SetPolicy(pb.SetPolicyRequest(model="m", policy_json="{not json"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        stub.GetRollout(pb.EndpointRequest(model="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_sticky_key_from_a_parameter_or_metadata(stub, clean):
    stub.SetPolicy(pb.SetPolicyRequest(model="m", policy_json=json.dumps(split((1, 50), (2, 50), sticky_key="user_id"))))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{clean.grpc_port}") as c:
        first = {u: grpc_infer(c, parameters={"user_id": str(u)})[0] for u in range(30)}
        assert set(first.values()) == {1, 2}
        for u in range(30):
            assert grpc_infer(c, headers={"user_id": str(u)})[0] == first[u]


def test_grpc_streamed_requests_follow_the_policy(stub, clean):
    import queue

    stub.SetPolicy(pb.SetPolicyRequest(model="m", policy_json=json.dumps(split((1, 50), (2, 50), sticky_key="u"))))
    results: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{clean.grpc_port}") as c:
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        for u in range(20):
            inp = grpcclient.InferInput("INPUT0", [4], "FP32")
            inp.set_data_from_numpy(X)
            c.async_stream_infer("m", [inp], request_id=str(u), parameters={"u": str(u)})
        answers = {}
        for _ in range(20):
            result, error = results.get(timeout=30)
            assert error is None
            response = result.get_response()
            answers[int(response.id)] = (int(response.model_version), int(result.as_numpy("CLASS")[0]))
        c.stop_stream()
    assert all(v == cls for v, cls in answers.values()) and {v for v, _ in answers.values()} == {1, 2}
    with grpcclient.InferenceServerClient(f"127.0.0.1:{clean.grpc_port}") as c:  # the same keys, unary
        assert all(grpc_infer(c, parameters={"u": str(u)})[0] == answers[u][0] for u in range(20))


def test_grpc_rollout_promotes_a_healthy_candidate(stub, clean):
    spec = {"candidate": {"version": 2}, "steps": [50, 100], "step_interval_s": 0.3, "min_requests": 5,
            "gates": {"p99_latency": {"margin": 10, "slack_ms": 1000}}}
    stub.StartRollout(pb.StartRolloutRequest(model="m", rollout_json=json.dumps(spec)))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{clean.grpc_port}") as c:
        deadline = time.monotonic() + 30
        while json.loads(stub.GetRollout(pb.EndpointRequest(model="m")).json)["state"] == "RUNNING":
            assert time.monotonic() < deadline
            grpc_infer(c)
    status = json.loads(stub.GetRollout(pb.EndpointRequest(model="m")).json)
    assert status["state"] == "PROMOTED" and status["verdict"]["stable"] == 2
    assert clean.runtime.model_versions("m")["labels"]["stable"] == 2
    clean.runtime.set_label("m", "stable", 1)


def test_grpc_set_label_and_rollback(stub, clean):
    reply = stub.SetLabel(pb.SetLabelRequest(model="m", actor="bob", label="blue", version=2))
    assert json.loads(reply.json) == {"model": "m", "label": "blue", "before": None, "after": 2}
    reply = stub.Rollback(pb.RollbackRequest(model="m", actor="bob", label="blue", version=1))
    assert json.loads(reply.json)["after"] == 1
    reply = stub.Rollback(pb.RollbackRequest(model="m", actor="bob"))  # the default, to the newest older
    assert json.loads(reply.json) == {"model": "m", "label": None, "before": 3, "after": 2}
    entries = [json.loads(e) for e in stub.ListAudit(pb.AuditRequest(model="m", limit=3)).entries_json]
    assert [(e["actor"], e["action"], e["after"]) for e in entries] == [
        ("bob", "label", {"label": "blue", "version": 2}),
        ("bob", "rollback", {"label": "blue", "version": 1}),
        ("bob", "rollback", {"label": None, "version": 2}),
    ]


@pytest.mark.parametrize("request_, code, words", [
    (pb.SetLabelRequest(model="m", label="stable"), "INVALID_ARGUMENT", "version is required"),
    (pb.SetLabelRequest(model="m", version=1), "INVALID_ARGUMENT", "label is empty"),
    (pb.SetLabelRequest(model="m", label="stable", version=9), "NOT_FOUND", "has no version 9"),
    (pb.SetLabelRequest(model="m", label="stable", version=4), "UNAVAILABLE", "it is FAILED"),
    (pb.RollbackRequest(model="m", label="gold"), "NOT_FOUND", "has no label 'gold'"),
    (pb.RollbackRequest(model="m", version=-1), "INVALID_ARGUMENT", "'version' must be a positive integer"),
    (pb.RollbackRequest(model="nope"), "NOT_FOUND", "nope"),
])
def test_grpc_label_and_rollback_errors_use_the_status_table(stub, request_, code, words):
    rpc = stub.SetLabel if isinstance(request_, pb.SetLabelRequest) else stub.Rollback
    with pytest.raises(grpc.RpcError) as e:
        rpc(request_)
    assert e.value.code() == grpc.StatusCode[code] and words in e.value.details()


# --- CLI ----------------------------------------------------------------------------------------


def cli(server, *args):
    return subprocess.run([sys.executable, "-m", "modelserve.cli", *args, "--url",
                           f"http://127.0.0.1:{server.http_port}", "--actor", "cli-user"],
                          capture_output=True, text=True, timeout=60)


def test_cli_traffic_commands(clean):
    out = cli(clean, "traffic", "set", "m", "stable=90", "2=10", "--sticky-key", "user_id", "--shadow", "3=50")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["policy"]["targets"] == [{"version": "stable", "weight": 90}, {"version": 2, "weight": 10}]
    assert json.loads(cli(clean, "traffic", "get", "m").stdout)["policy"]["sticky_key"] == "user_id"
    for u in range(30):
        clean.runtime.infer("m", {"INPUT0": X}, routing={"user_id": u})
    out = cli(clean, "traffic", "readout", "m")
    assert out.returncode == 0 and "baseline stable" in out.stdout and "shadow 3:" in out.stdout
    assert json.loads(cli(clean, "traffic", "readout", "m", "--json").stdout)["sticky_key"] == "user_id"
    audit = [json.loads(line) for line in cli(clean, "traffic", "audit", "m", "--limit", "1").stdout.splitlines()]
    assert audit[0]["actor"] == "cli-user" and audit[0]["action"] == "policy.set"
    bad = cli(clean, "traffic", "set", "m", "1=50")
    assert bad.returncode == 1 and "got 50" in bad.stderr and "HTTP 400" in bad.stderr
    assert cli(clean, "traffic", "clear", "m").returncode == 0


def test_cli_rollout_commands(clean):
    out = cli(clean, "rollout", "start", "m", "--candidate", "2", "--steps", "10,100", "--interval", "600", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["baseline"] == "stable"
    assert cli(clean, "rollout", "pause", "m").stdout.startswith("rollout of 2 against stable on m: PAUSED at 10%")
    assert json.loads(cli(clean, "rollout", "status", "m", "--json").stdout)["weight"] == 10
    assert json.loads(cli(clean, "rollout", "abort", "m", "--json").stdout)["state"] == "ABORTED"
    missing = cli(clean, "rollout", "start", "m")
    assert missing.returncode == 1 and "--candidate" in missing.stderr


def test_cli_model_label_and_rollback_commands(clean):
    out = cli(clean, "model", "label", "m", "green", "2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["label"] == "green" and json.loads(out.stdout)["after"] == 2
    out = cli(clean, "model", "rollback", "m", "--label", "green", "--version", "1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["after"] == 1
    (entry,) = call(clean, "GET", "/v2/models/m/traffic/audit?limit=1")[1]["entries"]
    assert (entry["actor"], entry["action"]) == ("cli-user", "rollback")
    out = cli(clean, "model", "rollback", "m")
    assert out.returncode == 0 and json.loads(out.stdout) == {"model": "m", "label": None, "before": 3, "after": 2}
    missing = cli(clean, "model", "label", "m", "stable", "9")
    assert missing.returncode == 1 and "has no version 9" in missing.stderr and "HTTP 404" in missing.stderr
    assert cli(clean, "model", "label", "m", "stable", "two").returncode == 2


# --- authorisation --------------------------------------------------------------------------------


def test_changes_need_the_admin_token_when_the_server_has_one(tmp_path):
    write_model(tmp_path, "m", {1: {}, 2: {}})
    loop = LoopThread("traffic-auth-test")
    s = Server(tmp_path, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0, admin_token="sesame"))
    loop.run(s.start())
    try:
        refused = call(s, "PUT", "/v2/models/m/traffic", split((1, 50), (2, 50)))
        assert refused[0] == 403 and "traffic management needs a valid bearer token" in refused[1]["error"]
        assert call(s, "POST", "/v2/models/m/rollout", {"candidate": {"version": 2}})[0] == 403
        assert call(s, "PUT", "/v2/models/m/traffic", split((1, 50), (2, 50)),
                    {"Authorization": "Bearer sesame"})[0] == 200
        assert call(s, "GET", "/v2/models/m/traffic")[1]["policy"] == split((1, 50), (2, 50))  # reads are open
        assert call(s, "POST", "/v2/models/m/labels/stable", {"version": 1})[0] == 403
        assert call(s, "POST", "/v2/models/m/rollback", {})[0] == 403
        assert call(s, "POST", "/v2/models/m/labels/stable", {"version": 1}, {"Authorization": "Bearer sesame"})[0] == 200
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            stub = pb_grpc.TrafficServiceStub(channel)
            for rpc, request in ((stub.ClearPolicy, pb.EndpointRequest(model="m")),
                                 (stub.SetLabel, pb.SetLabelRequest(model="m", label="stable", version=2)),
                                 (stub.Rollback, pb.RollbackRequest(model="m"))):
                with pytest.raises(grpc.RpcError) as e:
                    rpc(request)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            reply = stub.SetLabel(pb.SetLabelRequest(model="m", label="stable", version=2),
                                  metadata=[("authorization", "Bearer sesame")])
            assert json.loads(reply.json)["after"] == 2
        assert [e["action"] for e in s.runtime.traffic.audit("m")][-2:] == ["label", "label"]  # refusals not audited
    finally:
        loop.run(s.shutdown())
        loop.close()
