"""``modelserve serve`` as a user runs it: a real process on free ports, driven by tritonclient."""

import json
import re
import signal
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
    """``modelserve serve`` in a subprocess on ports 0; the chosen ports are read from its log."""

    def __init__(self, repository, *args):
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
            if "model versions READY" in text:
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


def test_a_port_in_use_is_one_clear_line_and_exit_1(server, tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "modelserve.cli", "serve", "--model-repository", str(tmp_path / "empty"),
         "--grpc-port", str(server.grpc_port), "--http-port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert f"gRPC cannot listen on 127.0.0.1:{server.grpc_port}" in result.stderr and "--grpc-port" in result.stderr
    assert "Traceback" not in result.stderr
