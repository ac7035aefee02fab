"""modelserve on a Ray cluster (modelserve.ray): the example repository deployed with Ray Serve on
a simulated two-node cluster (ray.cluster_utils.Cluster, both nodes on this machine, loopback
only), driven by the real tritonclient through Ray Serve's HTTP and gRPC proxies.

One cluster and one application serve the whole module (starting them takes ~30 s); the tests
run in file order, and the node-removal test, which changes the cluster, runs last. Marked
``ray``: ``pytest -m ray`` runs them alone, ``pytest -m "not ray"`` leaves them out. Skipped where
Ray Serve is not installed (``pip install '.[ray]'``; ``.[test]`` includes it).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("onnxruntime")

import grpc  # noqa: E402
import ray  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from ray import serve  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import modelserve  # noqa: E402
import modelserve.ray as modelserve_ray  # noqa: E402
from modelserve.ray._local import loopback_cluster  # noqa: E402
from modelserve._proto import modelserve_pb2, modelserve_pb2_grpc  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
APP = "modelserve"

# Replicas ask for a tenth of a CPU: on 2 cores, every deployment (and autoscaled extras) fits on
# either node. mlp autoscales fast (the bounds below are generous); add_sub keeps 2 replicas.
RAY_CONFIGS = {
    "add_sub": "ray: {min_replicas: 2, max_replicas: 2, num_cpus: 0.1}\n",
    "mlp": (
        "ray: {min_replicas: 1, max_replicas: 3, target_ongoing_requests: 1, max_ongoing_requests: 4,\n"
        "      upscale_delay_s: 0.5, downscale_delay_s: 2, num_cpus: 0.1}\n"
    ),
    "recommender": "ray: {num_cpus: 0.1}\n",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _replicas(deployment: str) -> dict[str, int]:
    status = serve.status().applications[APP].deployments[deployment]
    return {str(getattr(k, "value", k)): n for k, n in status.replica_states.items()}


def _running(deployment: str) -> int:
    return _replicas(deployment).get("RUNNING", 0)


def _replica_actors(deployment: str) -> set[str]:
    """The names of the Ray actors that are ``deployment``'s replicas (each ends in the
    replica's unique id, so a restarted replica has a new name)."""
    marker = f"::{APP}#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if marker in a["name"]}


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine: the head (the proxies, the ingress) and a worker."""
    with loopback_cluster({"num_cpus": 2, "resources": {"head": 1}},
                          [{"num_cpus": 2, "resources": {"worker": 1}}]) as (c, (worker,)):
        yield c, worker


@pytest.fixture(scope="module")
def app(cluster, tmp_path_factory):
    """The example repository (add_sub, mlp, recommender) with ray sections, deployed."""
    repo = tmp_path_factory.mktemp("ray") / "models"
    repo.mkdir()
    for name, section in RAY_CONFIGS.items():
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name)
        with open(repo / name / "config.yaml", "a") as f:
            f.write("\n" + section)
    http_port, grpc_port = _free_port(), _free_port()

    def deploy():
        return modelserve_ray.deploy(
            repo, name=APP, host="127.0.0.1", http_port=http_port, grpc_port=grpc_port, proxy_location="HeadOnly",
            ingress_actor_options={"resources": {"head": 0.01}},  # routing stays on the node that stays
        )

    where = deploy()
    assert where == {"name": APP, "http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    return {"repo": repo, "http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}", "deploy": deploy}


def _add_sub_inputs(module, x):
    inputs = [module.InferInput("INPUT0", list(x.shape), "FP32"), module.InferInput("INPUT1", list(x.shape), "FP32")]
    for i in inputs:
        i.set_data_from_numpy(x)
    return inputs


def _mlp_inputs(module, rows=1):
    x = np.random.default_rng(0).random((rows, 256), dtype=np.float32)
    i = module.InferInput("INPUT0", [rows, 256], "FP32")
    i.set_data_from_numpy(x)
    return [i]


def _metrics(app) -> str:
    with urllib.request.urlopen(f"http://{app['http']}/metrics", timeout=30) as reply:
        return reply.read().decode()


# --- the protocol at the door ------------------------------------------------------------------


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_tritonclient_infers_through_the_cluster(app, module):
    client = module.InferenceServerClient(app["grpc" if module is grpcclient else "http"])
    assert client.is_server_live() and client.is_server_ready()
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    result = client.infer("add_sub", _add_sub_inputs(module, x))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), 0 * x)

    users = module.InferInput("USER_ID", [2, 1], "INT64")
    users.set_data_from_numpy(np.array([[7], [42]], np.int64))
    stable = client.infer("recommender", [users], model_version="stable")
    latest = client.infer("recommender", [users])
    with modelserve.Runtime(app["repo"]) as rt:  # the single-process answers, for comparison
        expected = {v: rt.infer("recommender", {"USER_ID": np.array([[7], [42]], np.int64)}, version=v)["ITEMS"]
                    for v in (1, 2)}
    np.testing.assert_array_equal(stable.as_numpy("ITEMS"), expected[1])
    np.testing.assert_array_equal(latest.as_numpy("ITEMS"), expected[2])
    version = (lambda r: r.get_response()["model_version"]) if module is httpclient else (
        lambda r: r.get_response().model_version)
    assert (version(stable), version(latest)) == ("1", "2")

    meta = client.get_model_metadata("recommender")
    versions = meta["versions"] if module is httpclient else list(meta.versions)
    assert versions == ["1", "2"]


def test_streaming_inference_through_the_grpc_proxy(app):
    results, done = [], threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 8:
            done.set()

    client = grpcclient.InferenceServerClient(app["grpc"])
    client.start_stream(callback=callback)
    try:
        for i in range(8):
            x = np.full((1, 16), i, np.float32)
            client.async_stream_infer("add_sub", _add_sub_inputs(grpcclient, x), request_id=str(i))
        assert done.wait(60), f"{len(results)} of 8 streamed responses arrived"
    finally:
        client.stop_stream()
    assert [e for _, e in results if e is not None] == []
    by_id = {r.get_response().id: r.as_numpy("OUTPUT0") for r, _ in results}
    assert sorted(by_id) == [str(i) for i in range(8)]
    assert all((by_id[str(i)] == 2 * i).all() for i in range(8))


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_errors_carry_the_single_server_status(app, module):
    client = module.InferenceServerClient(app["grpc" if module is grpcclient else "http"])
    x = np.ones((2, 16), np.float32)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no_such_model", _add_sub_inputs(module, x))
    assert "no_such_model" in unknown.value.message()
    assert unknown.value.status() in ("StatusCode.NOT_FOUND", "404")

    bad = np.ones((2, 15), np.float32)  # add_sub wants [16]: the replica refuses it
    with pytest.raises(InferenceServerException) as shape:
        client.infer("add_sub", _add_sub_inputs(module, bad))
    assert shape.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")
    assert "INPUT0" in shape.value.message() and "add_sub" in shape.value.message()


def test_runtime_settings_are_refused_with_the_way_to_change_them(app):
    """Instances and batching are config.yaml's on every replica: the settings route says so (501)."""
    for method, body in (("GET", None), ("PATCH", {"instances": {"count": 2}})):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _http_json(app, method, "/modelserve/v1/models/add_sub/settings", body)
        assert refused.value.code == 501
        assert "modelserve ray deploy" in json.loads(refused.value.read())["error"]
    # The refused change is in the ingress's audit log, as a single server records it (reads are not).
    entry = _http_json(app, "GET", "/v2/models/add_sub/traffic/audit?limit=1")["entries"][-1]
    assert (entry["action"], entry["outcome"], entry["error"]["code"]) == ("settings", "failure", "UNIMPLEMENTED")
    assert entry["actor"] == "http:127.0.0.1"


# --- placement and metrics ---------------------------------------------------------------------


def test_replicas_land_on_both_nodes_and_report_metrics(app, cluster):
    client = grpcclient.InferenceServerClient(app["grpc"])
    x = np.ones((1, 16), np.float32)
    for _ in range(20):  # reach both add_sub replicas
        client.infer("add_sub", _add_sub_inputs(grpcclient, x))
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2

    def add_sub_nodes():
        text = _metrics(app)
        return {
            line.split('node="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("modelserve_requests_total{") and 'model="add_sub"' in line
        } == node_ids and text

    text = _wait(add_sub_nodes, 60, "metrics from add_sub replicas on both nodes")
    # The single server's names and labels, plus the replica (and node).
    requests = [line for line in text.splitlines()
                if line.startswith("modelserve_requests_total{") and 'model="add_sub"' in line]
    replicas = {line.split('replica="')[1].split('"')[0] for line in requests}
    assert len(replicas) == 2
    served = sum(float(line.rsplit(" ", 1)[1]) for line in requests if 'outcome="success"' in line)
    assert served >= 20
    assert "# TYPE modelserve_request_duration_seconds histogram" in text
    assert 'modelserve_model_state{model="mlp"' in text

    with urllib.request.urlopen(f"http://{app['http']}/metrics/targets", timeout=30) as reply:
        targets = json.loads(reply.read())
    assert {t["labels"]["replica"] for t in targets} >= replicas
    assert all(t["targets"][0].startswith("127.0.0.1:") for t in targets)


# --- autoscaling -------------------------------------------------------------------------------


def test_autoscaling_adds_replicas_under_load_and_removes_them_after(app):
    assert _running("mlp-v1") == 1
    stop = threading.Event()
    outcomes: Counter = Counter()

    def load():
        client = grpcclient.InferenceServerClient(app["grpc"])
        inputs = _mlp_inputs(grpcclient, rows=64)
        while not stop.is_set():
            try:
                client.infer("mlp", inputs)
                outcomes["ok"] += 1
            except InferenceServerException as e:
                outcomes[e.status()] += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: _running("mlp-v1") >= 2, 90, "mlp to scale above 1 replica under load")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert outcomes["ok"] > 0 and set(outcomes) == {"ok"}, outcomes
    _wait(lambda: _replicas("mlp-v1") == {"RUNNING": 1}, 120, "mlp to scale back to 1 replica when idle")


# --- traffic: a canary rollout on the cluster ---------------------------------------------------


def _http_json(app, method: str, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{app['http']}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"null")


def test_canary_rollout_on_the_cluster_promotes_a_healthy_candidate(app):
    # recommender serves 1 (label stable) and 2; the rollout splits requests that name no
    # version between them in the ingress, and promotes 2 once its gates pass at 100%.
    spec = {
        "candidate": {"version": 2}, "baseline": {"version": "stable"}, "steps": [50, 100],
        "step_interval_s": 1, "window_s": 60, "min_requests": 10,
        # Healthy means no errors here; latency on a shared 2-core machine is too noisy to gate on.
        "gates": {"error_rate": {"margin": 0.05}, "p99_latency": {"margin": 100, "slack_ms": 10000}},
    }
    started = _http_json(app, "POST", "/v2/models/recommender/rollout", spec)
    assert started["state"] == "RUNNING" and started["weight"] == 50

    client = grpcclient.InferenceServerClient(app["grpc"])
    users = grpcclient.InferInput("USER_ID", [1, 1], "INT64")
    users.set_data_from_numpy(np.array([[7]], np.int64))
    answered: Counter = Counter()

    def promoted():
        for _ in range(10):
            answered[client.infer("recommender", [users]).get_response().model_version] += 1
        return _http_json(app, "GET", "/v2/models/recommender/rollout")["state"] == "PROMOTED"

    _wait(promoted, 180, "the rollout of version 2 to be promoted", interval=0)
    assert answered["1"] > 0 and answered["2"] > 0  # both versions took traffic during the rollout
    assert client.infer("recommender", [users], model_version="stable").get_response().model_version == "2"
    assert {client.infer("recommender", [users]).get_response().model_version for _ in range(10)} == {"2"}
    text = _metrics(app)
    assert 'endpoint="recommender"' in text  # the ingress's traffic metrics are in /metrics too

    # modelserve.v1.TrafficService answers through Ray Serve's gRPC proxy as well.
    with grpc.insecure_channel(app["grpc"]) as channel:
        stub = modelserve_pb2_grpc.TrafficServiceStub(channel)
        rollout = json.loads(stub.GetRollout(modelserve_pb2.EndpointRequest(model="recommender")).json)
        assert rollout["state"] == "PROMOTED" and rollout["candidate"] == started["candidate"]
        with pytest.raises(grpc.RpcError) as unknown:
            stub.GetPolicy(modelserve_pb2.EndpointRequest(model="no_such_model"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_sticky_split_and_shadow_copies_on_the_cluster(app):
    client = httpclient.InferenceServerClient(app["http"])

    def version_for(user: int) -> str:
        users = httpclient.InferInput("USER_ID", [1, 1], "INT64")
        users.set_data_from_numpy(np.array([[user]], np.int64))
        return client.infer("recommender", [users], parameters={"user_id": user}).get_response()["model_version"]

    policy = {"targets": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}], "sticky_key": "user_id"}
    _http_json(app, "PUT", "/v2/models/recommender/traffic", policy)
    try:
        first = {user: version_for(user) for user in range(40)}
        assert set(first.values()) == {"1", "2"}  # split between the versions...
        assert {user: version_for(user) for user in range(40)} == first  # ...each user pinned to one

        mirrored = {"targets": [{"version": 1, "weight": 100}], "shadows": [{"version": 2, "percent": 100}]}
        _http_json(app, "PUT", "/v2/models/recommender/traffic", mirrored)
        assert {version_for(user) for user in range(20)} == {"1"}  # callers only ever see the primary

        def shadowed():
            shadows = _http_json(app, "GET", "/v2/models/recommender/traffic/readout")["shadows"]
            return shadows and shadows[0]["requests"] >= 20 and shadows[0]

        shadow = _wait(shadowed, 60, "20 shadow copies to version 2")
        assert shadow["target"] == "2" and shadow["errors"] == 0
    finally:
        _http_json(app, "DELETE", "/v2/models/recommender/traffic")


# --- a version swap -----------------------------------------------------------------------------


def test_version_swap_rolls_replicas_without_failed_requests(app):
    shutil.copytree(app["repo"] / "mlp" / "1", app["repo"] / "mlp" / "2")  # a new version appears
    stop = threading.Event()
    answered: Counter = Counter()
    failures: list[str] = []

    def load():
        client = grpcclient.InferenceServerClient(app["grpc"])
        inputs = _mlp_inputs(grpcclient)
        while not stop.is_set():
            try:
                answered[client.infer("mlp", inputs).get_response().model_version] += 1
            except InferenceServerException as e:
                failures.append(f"{e.status()}: {e.message()}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: answered["1"] >= 20, 60, "requests before the swap")
        untouched = {d: _replica_actors(d) for d in ("add_sub-v1", "recommender-v1", "metrics-directory")}
        assert all(untouched.values()), untouched
        app["deploy"]()  # the cluster's swap: deploy the repository again
        _wait(lambda: answered["2"] >= 20, 120, "requests answered by version 2 after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    # Only what changed rolled: the deployments of versions already served kept their replicas.
    assert {d: _replica_actors(d) for d in untouched} == untouched
    client = grpcclient.InferenceServerClient(app["grpc"])
    # The superseded version stays served, by number (keep_previous_versions: 1), as on one server.
    assert client.infer("mlp", _mlp_inputs(grpcclient), model_version="1").get_response().model_version == "1"
    assert list(client.get_model_metadata("mlp").versions) == ["1", "2"]


# --- losing a node -----------------------------------------------------------------------------


def test_node_removed_under_load_loses_only_its_requests_and_recovers(app, cluster):
    c, worker = cluster
    worker_id = worker.node_id
    stop = threading.Event()
    results: list[tuple[float, str, str]] = []  # (time, outcome, message)
    lock = threading.Lock()

    def load():
        client = grpcclient.InferenceServerClient(app["grpc"])
        inputs = _add_sub_inputs(grpcclient, np.ones((1, 16), np.float32))
        while not stop.is_set():
            try:
                client.infer("add_sub", inputs)
                outcome, message = "ok", ""
            except InferenceServerException as e:
                outcome, message = e.status(), e.message()
            with lock:
                results.append((time.monotonic(), outcome, message))

    concurrency = 4
    threads = [threading.Thread(target=load, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: len(results) >= 20, 60, "requests before the node goes")
        removed_at = time.monotonic()
        c.remove_node(worker, allow_graceful=False)
        _wait(lambda: not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == worker_id), 60, "the node to be gone")
        # Serve replaces the lost replica on the node that is left.
        _wait(lambda: _replicas("add_sub-v1") == {"RUNNING": 2}, 120, "add_sub back at 2 replicas")
        recovered_at = time.monotonic()
        _wait(lambda: sum(1 for r in results if r[0] > recovered_at) >= 20, 60, "requests after recovery")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failures = [r for r in results if r[1] != "ok"]
    # Only requests on the lost replica fail, as UNAVAILABLE naming the model; never before the
    # node went, never once the application has recovered.
    assert all(r[1] == "StatusCode.UNAVAILABLE" and "add_sub" in r[2] for r in failures), failures[:3]
    assert all(removed_at <= r[0] <= recovered_at for r in failures), failures[:3]
    assert len(failures) <= concurrency, failures
    assert all(r[1] == "ok" for r in results if r[0] > recovered_at)
    client = httpclient.InferenceServerClient(app["http"])
    # Every model's replicas that were on the lost node come back, and the application is ready.
    _wait(client.is_server_ready, 120, "the application to report ready again")
    assert client.infer("mlp", _mlp_inputs(httpclient)).as_numpy("OUTPUT0").shape == (1, 10)
