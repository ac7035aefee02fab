"""``modelserve serve`` as a user runs it: a real process on free ports, driven by tritonclient."""

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"


class ServerProcess:
    """``modelserve serve`` in a subprocess on ports 0; the chosen ports are read from its log.
    The constructor returns once the log has a line with ``wait_for`` (default: loading done)."""

    def __init__(self, repository, *args, wait_for="model versions READY"):
        self.wait_for = wait_for
        cmd = [sys.executable, "-c", "import sys; from modelserve.cli import main; sys.exit(main())",
               "serve", "--model-repository", str(repository), "--grpc-port", "0", "--http-port", "0", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.grpc_port = self.http_port = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.proc.kill()
            self.stop()
            raise AssertionError("server did not start:\n" + "".join(self.lines))

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            text = line
            if line.startswith("{"):
                text = json.loads(line)["message"]
            if m := re.search(r"gRPC listening on [\d.]+:(\d+)", text):
                self.grpc_port = int(m.group(1))
            if m := re.search(r"HTTP listening on \w+://[\d.]+:(\d+)", text):
                self.http_port = int(m.group(1))
            if self.wait_for in text:
                self._ready.set()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        self.proc.stderr.close()
        return code


@pytest.fixture(scope="module")
def server():
    s = ServerProcess(EXAMPLES, "--shutdown-grace", "0")
    yield s
    assert s.stop() == 0


def add_sub_inputs(module, n=2):
    a = np.arange(16 * n, dtype=np.float32).reshape(n, 16)
    inputs = [module.InferInput("INPUT0", [n, 16], "FP32"), module.InferInput("INPUT1", [n, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    return a, inputs


def test_startup_logs_a_line_per_port(server):
    assert server.grpc_port and server.http_port
    assert any("gRPC listening" in line for line in server.lines)
    assert any("HTTP listening" in line and "/metrics" in line for line in server.lines)


def test_grpc_and_http_clients_infer(server):
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    http_client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert grpc_client.is_server_ready() and http_client.is_server_ready()
    for module, client in ((grpcclient, grpc_client), (httpclient, http_client)):
        a, inputs = add_sub_inputs(module)
        result = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - 1)
    users = np.array([[7], [42]], dtype=np.int64)
    inp = grpcclient.InferInput("USER_ID", [2, 1], "INT64")
    inp.set_data_from_numpy(users)
    stable = grpc_client.infer("recommender", [inp], model_version="stable")  # a label as the version
    assert stable.as_numpy("ITEMS").shape == (2, 10)


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_as_requests_flow(server):
    import urllib.request

    url = f"http://127.0.0.1:{server.http_port}/metrics"
    before = urllib.request.urlopen(url).read().decode()
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    for _ in range(5):
        client.infer("add_sub", add_sub_inputs(httpclient)[1])
    after = urllib.request.urlopen(url).read().decode()
    labels = {"model": "add_sub", "version": "1"}
    assert metric(after, "modelserve_requests_total", outcome="success", **labels) >= \
        metric(before, "modelserve_requests_total", outcome="success", **labels) + 5
    assert metric(after, "modelserve_request_duration_seconds_count", **labels) >= \
        metric(before, "modelserve_request_duration_seconds_count", **labels) + 5
    assert metric(after, "modelserve_model_state", state="READY", **labels) == 1.0
    assert "modelserve_memory_pool_bytes" in after and "modelserve_batch_size_bucket" in after


SLOW_MODEL = """
import time

class Model:
    def execute(self, inputs):
        time.sleep(0.3)
        return {"OUTPUT0": inputs["INPUT0"]}
"""


def test_sigterm_lets_every_inflight_request_finish_and_exits_0(tmp_path):
    (tmp_path / "slow" / "1").mkdir(parents=True)
    (tmp_path / "slow" / "1" / "model.py").write_text(SLOW_MODEL)
    (tmp_path / "slow" / "config.yaml").write_text(textwrap.dedent("""
        max_batch_size: 1
        inputs: [{name: INPUT0, datatype: FP32, shape: [4]}]
        outputs: [{name: OUTPUT0, datatype: FP32, shape: [4]}]
    """))
    s = ServerProcess(tmp_path, "--shutdown-grace", "1", "--log-format", "json")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
    results, errors = [], []

    def call(i):
        inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.full((1, 4), i, np.float32))
        try:
            results.append(float(client.infer("slow", [inp]).as_numpy("OUTPUT0")[0, 0]))
        except Exception as e:  # asserted empty below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all six admitted: one running, five queued
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert not client.is_server_ready()  # ready turns false at once
    for t in threads:
        t.join(30)
    assert s.stop() == 0
    assert errors == []
    assert sorted(results) == [float(i) for i in range(6)]
    messages = [json.loads(line)["message"] for line in s.lines if line.startswith("{")]
    assert any("shutting down" in m for m in messages) and messages[-1] == "stopped"


def test_readme_client_example_runs(server):
    from test_examples import python_blocks

    (code,) = python_blocks(ROOT / "README.md", client=True)
    code = code.replace("localhost:8001", f"127.0.0.1:{server.grpc_port}")
    code = code.replace("localhost:8000", f"127.0.0.1:{server.http_port}")
    exec(compile(code, "README.md[tritonclient example]", "exec"), {"__name__": "readme"})


def test_validate_exits_1_for_a_broken_repository(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text("max_batch_sise: 4\n")
    result = subprocess.run([sys.executable, "-m", "modelserve.cli", "validate", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "did you mean 'max_batch_size'" in result.stderr


def test_the_example_storyteller_answers_the_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="none", max_retries=0)
    assert "storyteller" in [m.id for m in client.models.list()]
    out = client.completions.create(model="storyteller", prompt="The lighthouse keeper climbed the stairs",
                                    max_tokens=16, temperature=0)
    assert out.choices[0].text.startswith(" every evening and lit the lamp")
    chat = client.chat.completions.create(model="storyteller", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=4)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 4
    client.close()


# --- readiness (Note [Server readiness] in modelserve/runtime.py) --------------------------------

ECHO_CONFIG = """
max_batch_size: 4
inputs: [{name: INPUT0, datatype: FP32, shape: [4]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [4]}]
"""

GATED_MODEL = """
import time
from pathlib import Path

class Model:
    def load(self, context):  # waits for the test to create the gate file
        deadline = time.monotonic() + 120
        while not Path({gate!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def execute(self, inputs):
        return {{"OUTPUT0": inputs["INPUT0"]}}
"""

ECHO_MODEL = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
"""

BROKEN_MODEL = """
class Model:
    def load(self, context):
        raise RuntimeError("weights are corrupt")

    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
"""


def write_model(repository, name, code):
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.yaml").write_text(ECHO_CONFIG)
    (repository / name / "1" / "model.py").write_text(code)


def clients(s):
    return grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc_port}"), \
        httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_server_is_live_but_not_ready_over_grpc_and_http_until_a_slow_model_has_loaded(tmp_path):
    repository, gate = tmp_path / "models", tmp_path / "gate"
    write_model(repository, "fast", ECHO_MODEL)
    write_model(repository, "slow", GATED_MODEL.format(gate=str(gate)))
    s = ServerProcess(repository, "--shutdown-grace", "0", wait_for="HTTP listening")
    try:
        grpc_client, http_client = clients(s)
        wait_until(lambda: http_client.is_model_ready("fast"))  # one model is up, the other still loading
        assert grpc_client.is_server_live() and http_client.is_server_live()
        assert not grpc_client.is_server_ready() and not http_client.is_server_ready()
        gate.touch()
        wait_until(http_client.is_server_ready)
        assert grpc_client.is_server_ready() and grpc_client.is_model_ready("slow")
    finally:
        gate.touch()
        assert s.stop() == 0


def test_a_model_that_failed_at_start_keeps_the_server_not_ready_and_the_reason_is_logged(tmp_path):
    write_model(tmp_path, "good", ECHO_MODEL)
    write_model(tmp_path, "broken", BROKEN_MODEL)
    s = ServerProcess(tmp_path, "--shutdown-grace", "0")
    try:
        grpc_client, http_client = clients(s)
        assert grpc_client.is_model_ready("good") and http_client.is_model_ready("good")
        assert not grpc_client.is_server_ready() and not http_client.is_server_ready()
        wait_until(lambda: any("readiness" in line and "waits for" in line for line in s.lines))
        (line,) = [line for line in s.lines if "waits for" in line]
        assert "model 'broken'" in line and "weights are corrupt" in line
    finally:
        assert s.stop() == 0


def test_a_model_loaded_after_start_in_explicit_mode_does_not_change_server_readiness(tmp_path):
    write_model(tmp_path, "good", ECHO_MODEL)
    write_model(tmp_path, "broken", BROKEN_MODEL)
    s = ServerProcess(tmp_path, "--shutdown-grace", "0", "--model-control-mode", "explicit", "--load-model", "good")
    try:
        grpc_client, http_client = clients(s)
        assert grpc_client.is_server_ready() and http_client.is_server_ready()
        with pytest.raises(Exception, match="weights are corrupt"):
            http_client.load_model("broken")
        assert not grpc_client.is_model_ready("broken") and not http_client.is_model_ready("broken")
        assert grpc_client.is_server_ready() and http_client.is_server_ready()
    finally:
        assert s.stop() == 0


def test_the_kubernetes_readiness_probe_asks_the_ready_route_and_liveness_the_live_route():
    import yaml

    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    http_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert "--host=0.0.0.0" in container["args"]  # the kubelet probes the pod's address
    for probe, route in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = container[probe]["httpGet"]
        assert get["path"] == route and get["port"] in ("http", http_port)



def test_the_kubernetes_state_dir_is_writable_beside_the_read_only_repository():
    import yaml

    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    repository = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--model-repository="))
    state = next((a.split("=", 1)[1] for a in container["args"] if a.startswith("--state-dir=")), None)
    assert mounts[repository].get("readOnly")
    assert state is not None, "the default state dir lies inside the read-only repository"
    assert state in mounts and not mounts[state].get("readOnly")

# --- start-up errors: one line, no traceback, exit 2 for usage and 1 for run-time failures ----------


def run_cli(*args, prelude=""):
    """``modelserve ARGS`` as a user runs it (``prelude``: Python run first, in the same process)."""
    command = [sys.executable, "-m", "modelserve.cli", *args] if not prelude else \
        [sys.executable, "-c", prelude + "; import sys; from modelserve.cli import main; sys.exit(main())", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def assert_one_line(result, status, *words):
    assert result.returncode == status, result.stderr
    for noise in ("Traceback", "Event loop is closed", "never awaited"):
        assert noise not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_a_bad_memory_budget_size_is_a_usage_error_naming_the_flag(tmp_path):
    result = run_cli("serve", "--model-repository", str(tmp_path), "--memory-budget", "cpu=abc")
    assert_one_line(result, 2, "--memory-budget", "'abc' is not a size", "--help")


def test_a_memory_budget_for_a_gpu_the_machine_lacks_is_a_usage_error(tmp_path):
    from modelserve import cuda

    missing = f"cuda:{cuda.device_count()}"  # one past the last GPU: cuda:0 on a machine with none
    result = run_cli("serve", "--model-repository", str(tmp_path), "--memory-budget", f"cpu=1GiB,{missing}=1GiB")
    assert_one_line(result, 2, "--memory-budget", missing, "this machine has")


@pytest.mark.parametrize("flag, value", [("--grpc-port", "70000"), ("--http-port", "abc"),
                                          ("--poll-interval", "0"), ("--drain-timeout", "-1")])
def test_a_bad_serve_flag_value_is_a_usage_error_naming_the_flag(tmp_path, flag, value):
    assert_one_line(run_cli("serve", "--model-repository", str(tmp_path), flag, value), 2, flag, repr(value))


def test_a_missing_repository_is_one_line_naming_the_path_and_exit_1(tmp_path):
    missing = tmp_path / "no-such-repository"
    result = run_cli("serve", "--model-repository", str(missing), "--grpc-port", "0", "--http-port", "0")
    assert_one_line(result, 1, "--model-repository", str(missing), "does not exist")


@pytest.mark.parametrize("frontend, flag", [("gRPC", "--grpc-port"), ("HTTP", "--http-port")])
def test_a_port_in_use_is_one_line_naming_the_address_and_exit_1(tmp_path, frontend, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--http-port" if flag == "--grpc-port" else "--grpc-port"
        result = run_cli("serve", "--model-repository", str(tmp_path), flag, str(port), other, "0")
    assert_one_line(result, 1, f"{frontend} cannot listen on 127.0.0.1:{port}", "in use", flag)


def test_perf_without_tritonclient_names_the_install_command():
    result = run_cli("perf", "-m", "m", prelude="import sys; sys.modules['tritonclient'] = None")
    assert_one_line(result, 2, "tritonclient", "pip install 'tritonclient[grpc]'")


@pytest.mark.parametrize("args, words", [
    (["ray", "deploy", "--model-repository", "/no/such/repository"], ["--model-repository", "/no/such/repository"]),
    (["settings", "get", "m", "--url", "http://127.0.0.1:1", "--token-file", "/no/such/token"],
     ["--token-file", "/no/such/token"]),
    (["traffic", "set", "m", "--url", "http://127.0.0.1:1", "--file", "/no/such/policy.yaml"],
     ["--file", "/no/such/policy.yaml"]),
])
def test_a_missing_path_given_to_another_subcommand_is_one_line_and_exit_1(args, words):
    assert_one_line(run_cli(*args), 1, *words)


def test_a_bad_value_given_to_another_subcommand_is_one_usage_line_and_exit_2():
    assert_one_line(run_cli("settings", "set", "m", "--instances", "many"), 2, "--instances", "'many'")


@pytest.mark.parametrize("freeze", [False, True])
def test_the_start_up_heap_is_frozen_only_when_asked(tmp_path, freeze):
    # Note [Start-up heap]: modelserve serve sets the option; an embedding process is left alone.
    import gc

    from conftest import LoopThread
    from modelserve.server.app import Server
    from modelserve.server.common import ServerOptions

    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text("class Model:\n    def execute(self, inputs):\n        return inputs\n")
    (tmp_path / "m" / "config.yaml").write_text("max_batch_size: 0\n")
    gc.unfreeze()
    loop = LoopThread()
    server = Server(tmp_path, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0, freeze_start_up_heap=freeze))
    try:
        loop.run(server.start())
        assert (gc.get_freeze_count() > 0) == freeze
    finally:
        gc.unfreeze()
        loop.run(server.shutdown())
        loop.close()
