"""Process-isolated Python instances (``instances: {isolation: process}``; Note [Process
instances] in csrc/exec/process_backend.h): real worker processes, real shared memory, real
signals."""

import logging
import os
import re
import signal
import struct
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import modelserve
from modelserve import Runtime, VersionState
from modelserve._native import core

MODEL = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from modelserve.errors import InvalidArgumentError

    def _mapping_of(address):
        for line in open("/proc/self/maps"):
            fields = line.split()
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            if lo <= address < hi:
                return " ".join(fields[5:])
        return ""

    class Model:
        def load(self, context):
            self.instance = context.instance
            self.marks = Path(context.parameters["marks"])
            print(f"worker for instance {context.instance} loaded", flush=True)
            print("a line on stderr", file=sys.stderr, flush=True)

        def execute(self, inputs):
            x = inputs["INPUT0"]
            action = int(x.flat[0]) if x.size else 0
            (self.marks / f"started-{os.getpid()}").write_text(str(action))
            if action == -1:      # wait to be killed
                time.sleep(60)
            elif action == -2:
                os._exit(3)
            elif action == -3:
                raise ValueError("row says no")
            elif action == -4:
                raise InvalidArgumentError("INPUT0 must not be -4")
            elif action == -5:    # hang past the timeout
                time.sleep(60)
            elif action == -6:
                os.kill(os.getpid(), 11)  # SIGSEGV
            elif action == -7:    # a slow batch that finishes
                time.sleep(1)
            address = x.__array_interface__["data"][0]
            return {
                "OUTPUT0": x * 2,
                "PID": np.full((x.shape[0], 1), os.getpid(), np.int64),
                "WHERE": np.array([[_mapping_of(address).encode()]] * x.shape[0], dtype=object),
            }
    """
)


def make_model(repo, name="p", instances="{count: 2, isolation: process, execute_timeout_s: 5}", extra=""):
    marks = repo / f"{name}-marks"
    marks.mkdir(parents=True, exist_ok=True)
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.py").write_text(MODEL)
    (repo / name / "config.yaml").write_text(
        "max_batch_size: 8\n"
        "inputs: [{name: INPUT0, datatype: FP32, shape: [-1]}]\n"
        "outputs: [{name: OUTPUT0, datatype: FP32, shape: [-1]}, {name: PID, datatype: INT64, shape: [1]},\n"
        "          {name: WHERE, datatype: BYTES, shape: [1]}]\n"
        f"instances: {instances}\n"
        f"parameters: {{marks: '{marks}'}}\n" + extra
    )
    return marks


def row(value, width=4):
    return {"INPUT0": np.full((1, width), value, np.float32)}


def pid_of(rt, name="p", value=1.0):
    return int(rt.infer(name, row(value), outputs=["PID"])["PID"][0, 0])


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def shm_in_use():
    return core.shm_pool().stats()["bytes_in_use"]


def workers(rt, name="p"):
    return rt.repository.get(name).versions[1].workers


@pytest.fixture
def rt(tmp_path):
    make_model(tmp_path)
    with Runtime(tmp_path) as runtime:
        yield runtime


def test_a_process_instance_computes_in_its_own_process_on_shared_memory(rt):
    out = rt.infer("p", {"INPUT0": np.arange(6, dtype=np.float32).reshape(2, 3)})
    np.testing.assert_array_equal(out["OUTPUT0"], np.arange(6).reshape(2, 3) * 2)
    pids = {int(p) for p in out["PID"].ravel()}
    assert os.getpid() not in pids
    assert pids <= {w["pid"] for w in workers(rt).workers()}
    # The worker's input array is a view of a memfd segment the core mapped (Note [Shared memory
    # segments]), not a copy of its own.
    assert out["WHERE"][0, 0].startswith(b"/memfd:modelserve-shm")
    # Outputs are views of shared memory as well, until the caller lets go of them.
    assert shm_in_use() > 0
    del out
    assert shm_in_use() == 0


def test_the_control_channel_carries_descriptors_only(rt):
    w = workers(rt)

    def per_batch(width):
        for _ in range(3):  # the first batches announce their new segments
            rt.infer("p", row(1.0, width), outputs=["OUTPUT0"])
        before = w.stats()
        rt.infer("p", row(1.0, width), outputs=["OUTPUT0"])
        after = w.stats()
        assert after["batches"] - before["batches"] == 1
        return after["control_bytes"] - before["control_bytes"]

    small, large = per_batch(4), per_batch(1 << 20)  # 16 bytes and 4 MiB of input
    assert small == large
    assert small < 400


def test_kill_9_mid_batch_fails_that_batch_only_and_the_worker_restarts(rt, tmp_path):
    marks = tmp_path / "p-marks"
    before = {w["instance"]: w for w in workers(rt).workers()}
    result = {}

    def doomed():
        try:
            rt.infer("p", row(-1.0))
        except modelserve.ModelserveError as e:
            result["error"] = e

    t = threading.Thread(target=doomed)
    t.start()
    assert wait_for(lambda: any(p.read_text() == "-1" for p in marks.glob("started-*")))
    victim = next(int(p.name.split("-")[1]) for p in marks.glob("started-*") if p.read_text() == "-1")
    # The other instance serves meanwhile.
    other = pid_of(rt)
    assert other != victim and other in {w["pid"] for w in before.values()}
    os.kill(victim, signal.SIGKILL)
    t.join(30)
    e = result["error"]
    assert isinstance(e, modelserve.InternalError)
    assert f"the worker process (pid {victim}) was killed by signal 9 (SIGKILL) during execute()" in str(e)
    # The next batches succeed, on a restarted worker and on the untouched one.
    assert wait_for(lambda: victim not in {w["pid"] for w in workers(rt).workers()} and
                    all(w["pid"] > 0 for w in workers(rt).workers()))
    seen = {pid_of(rt) for _ in range(20)}
    assert victim not in seen
    after = {w["instance"]: w for w in workers(rt).workers()}
    untouched = [i for i, w in before.items() if w["pid"] == other][0]
    assert after[untouched]["pid"] == other and after[untouched]["starts"] == 1
    assert workers(rt).stats()["crashes"] == 1
    assert wait_for(lambda: shm_in_use() == 0)


def test_a_worker_that_exits_fails_its_batch_naming_the_exit_code(rt):
    with pytest.raises(modelserve.InternalError, match=r"the worker process \(pid \d+\) exited with code 3 during"):
        rt.infer("p", row(-2.0))
    np.testing.assert_array_equal(rt.infer("p", row(1.0))["OUTPUT0"], [[2, 2, 2, 2]])
    assert wait_for(lambda: shm_in_use() == 0)


def test_a_segfault_is_named(rt):
    # Under .ci/sanitize the worker has AddressSanitizer preloaded, whose SIGSEGV handler aborts.
    sanitized = "libasan" in os.environ.get("LD_PRELOAD", "")
    signal_text = r"6 \(SIGABRT\)" if sanitized else r"11 \(SIGSEGV\)"
    with pytest.raises(modelserve.InternalError, match="killed by signal " + signal_text):
        rt.infer("p", row(-6.0))
    np.testing.assert_array_equal(rt.infer("p", row(1.0))["OUTPUT0"], [[2, 2, 2, 2]])


def test_a_batch_past_the_timeout_kills_the_worker(tmp_path):
    make_model(tmp_path, instances="{count: 1, isolation: process, execute_timeout_s: 0.5}")
    with Runtime(tmp_path) as rt:
        first = pid_of(rt)
        t0 = time.monotonic()
        with pytest.raises(modelserve.InternalError) as e:
            rt.infer("p", row(-5.0))
        assert time.monotonic() - t0 < 30
        assert f"execute() ran past instances.execute_timeout_s (0.5 s); the worker process (pid {first}) was killed" \
            in str(e.value)
        assert pid_of(rt) != first
        assert wait_for(lambda: shm_in_use() == 0)


def test_exceptions_fail_only_their_batch_and_keep_modelserve_codes(rt):
    pids = {w["pid"] for w in workers(rt).workers()}
    with pytest.raises(modelserve.InternalError, match="execute\\(\\) raised ValueError: row says no"):
        rt.infer("p", row(-3.0))
    with pytest.raises(modelserve.InvalidArgumentError, match="INPUT0 must not be -4"):
        rt.infer("p", row(-4.0))
    assert {w["pid"] for w in workers(rt).workers()} == pids  # nobody was restarted
    assert workers(rt).stats()["crashes"] == 0


def test_five_crashes_within_a_minute_fail_the_version(tmp_path):
    make_model(tmp_path, instances="{count: 1, isolation: process}")
    with Runtime(tmp_path) as rt:
        for _ in range(5):
            with pytest.raises(modelserve.ModelserveError):
                rt.infer("p", row(-2.0))
        mv = rt.repository.get("p").versions[1]
        assert wait_for(lambda: mv.state is VersionState.FAILED)
        assert "5 worker crashes within 60 s; the last: the worker process" in mv.reason
        assert "exited with code 3" in mv.reason
        with pytest.raises(modelserve.UnavailableError, match="5 worker crashes"):
            rt.infer("p", row(1.0))
        assert workers(rt).stats()["starts"] == 5  # the first, then four restarts; none after


def test_worker_output_reaches_the_log_with_model_version_and_instance(tmp_path, caplog):
    make_model(tmp_path)
    with caplog.at_level(logging.INFO, logger="modelserve.worker"):
        with Runtime(tmp_path) as rt:
            assert wait_for(lambda: sum("a line on stderr" in r.getMessage() for r in caplog.records) == 2)
            with pytest.raises(modelserve.InternalError):
                rt.infer("p", row(-2.0))
    messages = [r.getMessage() for r in caplog.records if r.name == "modelserve.worker"]
    assert "model 'p' version 1 instance 0: worker for instance 0 loaded" in messages
    assert "model 'p' version 1 instance 1: worker for instance 1 loaded" in messages
    crash = [r for r in caplog.records if "exited with code 3" in r.getMessage()]
    assert crash and crash[0].levelno == logging.WARNING


def test_isolation_process_is_refused_for_other_backends_and_gpus(tmp_path):
    from modelserve.config import ModelConfig

    with pytest.raises(Exception, match="isolation: process runs instances on the CPU"):
        ModelConfig.model_validate({"instances": {"isolation": "process", "device": "gpu"}})
    with pytest.raises(Exception, match="execute_timeout_s needs isolation: process"):
        ModelConfig.model_validate({"instances": {"execute_timeout_s": 1}})
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    (tmp_path / "o" / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph), tmp_path / "o" / "1" / "model.onnx")
    (tmp_path / "o" / "config.yaml").write_text("instances: {isolation: process}\n")
    from modelserve.repository import validate_repository

    assert any("instances.isolation: process is for the python backend, not 'onnx'" in e
               for e in validate_repository(tmp_path))
    with Runtime(tmp_path) as rt:
        version = rt.model_versions("o")["versions"][1]
        assert version["state"] == "FAILED"
        assert "instances.isolation: process is for the python backend, not 'onnx'" in version["reason"]


def test_scale_down_to_zero_and_cold_start_stop_and_start_workers(tmp_path):
    make_model(tmp_path, instances="{count: 1, isolation: process, scale_to_zero_after_s: 2}")
    with Runtime(tmp_path, autoscale_tick_s=3600) as rt:
        mv = rt.repository.get("p").versions[1]
        first = pid_of(rt)
        rt.autoscaler.tick(1e9)
        rt.autoscaler.tick(1e9 + 2.5)
        assert mv.engine.instance_count == 0
        assert [w["pid"] for w in mv.workers.workers()] == [0]
        with pytest.raises(ChildProcessError):
            os.waitpid(first, os.WNOHANG)  # reaped by the core: no zombie left
        second = int(rt.infer("p", row(1.0), outputs=["PID"], timeout_us=60_000_000)["PID"][0, 0])
        assert second != first and mv.workers.workers()[0]["starts"] == 2
        assert mv.scale(2, "test")
        assert {w["pid"] > 0 for w in mv.workers.workers()} == {True} and len(mv.workers.workers()) == 2
        assert mv.scale(1, "test")
        assert sum(w["pid"] > 0 for w in mv.workers.workers()) == 1


def test_memory_is_counted_per_worker_and_exported(tmp_path):
    make_model(tmp_path)
    with Runtime(tmp_path) as rt:
        mv = rt.repository.get("p").versions[1]
        pss = [w["pss_bytes"] for w in mv.workers.workers()]
        assert len(pss) == 2 and all(p > 1 << 20 for p in pss)  # an interpreter with numpy
        assert mv.memory["measured_bytes"] >= sum(pss) // 2  # measured from the workers after warmup
        from modelserve.server.metrics import Metrics

        text = Metrics(rt).render()[0].decode()
        assert 'modelserve_instance_memory_bytes{instance="0",model="p",version="1"}' in text
        assert 'modelserve_instance_restarts_total{model="p",version="1"} 0.0' in text
        assert 'modelserve_memory_pool_bytes{kind="in_use",pool="shm_pool"}' in text


def test_warmup_runs_on_the_workers(tmp_path):
    marks = make_model(tmp_path, extra="warmup: [{batch_size: 2, count: 2}]\n")
    with Runtime(tmp_path) as rt:
        assert len(list(marks.glob("started-*"))) == 2  # both workers ran warmup batches
        assert rt.model_ready("p")


def test_a_version_swap_under_load_fails_no_request(tmp_path):
    make_model(tmp_path, extra="keep_previous_versions: 0\n")
    with Runtime(tmp_path, model_control_mode="explicit", load_models=["p"]) as rt:
        old = {w["pid"] for w in workers(rt).workers()}
        errors, answers, stop = [], [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    answers.append(pid_of(rt))
                except Exception as e:  # pragma: no cover - the assertion below reports it
                    errors.append(e)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        (tmp_path / "p" / "2").mkdir()
        (tmp_path / "p" / "2" / "model.py").write_text(MODEL)
        rt.load_model("p")
        n = len(answers)
        assert wait_for(lambda: len(answers) > n + 10)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == []
        assert rt.repository.get("p").ready_versions() == [2]
        for pid in old:  # the old version's workers have exited and were reaped
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def test_shutdown_finishes_the_running_batch_then_stops_the_workers(tmp_path):
    marks = make_model(tmp_path, instances="{count: 1, isolation: process}")
    rt = Runtime(tmp_path)
    pid = workers(rt).workers()[0]["pid"]
    pending = rt.submit("p", row(-7.0))
    assert wait_for(lambda: any(p.read_text() == "-7" for p in marks.glob("started-*")))
    rt.close()  # drains: the running batch finishes, then the worker is asked to quit
    pending.wait()
    np.testing.assert_array_equal(pending.outputs()["OUTPUT0"], [[-14, -14, -14, -14]])
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not os.path.exists(f"/proc/{pid}")


def test_engine_api_takes_process_instances_directly(tmp_path):
    from modelserve.backends.process import process_instances
    from modelserve.config import ModelConfig
    from modelserve.engine import ModelEngine

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text(
        "import numpy as np\nclass Model:\n    def execute(self, inputs):\n"
        "        return {'y': np.char.upper(inputs['s'].astype(bytes)).astype(object), 'n': inputs['n'][::-1]}\n"
    )
    cfg = ModelConfig.model_validate({"instances": {"isolation": "process"}})
    workers = process_instances("e", 1, tmp_path / "1", cfg, [])
    with ModelEngine("e", workers, inputs=[("s", "BYTES", [-1]), ("n", "INT16", [-1])]) as engine:
        out = engine.infer({"s": np.array([b"ab", b"", b"xyz"], dtype=object), "n": np.array([1, 2, 3], np.int16)})
        assert list(out["y"]) == [b"AB", b"", b"XYZ"]
        np.testing.assert_array_equal(out["n"], [3, 2, 1])
        assert out["n"].dtype == np.int16


def test_the_server_serves_process_instances_and_survives_a_killed_worker(tmp_path):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException
    from test_server import ServerProcess

    make_model(tmp_path, instances="{count: 1, isolation: process}")
    server = ServerProcess(tmp_path, "--shutdown-grace", "0")
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")

        def ask(value):
            x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            x.set_data_from_numpy(np.full((1, 4), value, np.float32))
            return client.infer("p", [x])

        first = ask(1.0)
        np.testing.assert_array_equal(first.as_numpy("OUTPUT0"), [[2, 2, 2, 2]])
        pid = int(first.as_numpy("PID")[0, 0])
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("e", pytest.raises(InferenceServerException,
                                                                                 ask, -1.0)))
        t.start()
        marks = tmp_path / "p-marks"
        assert wait_for(lambda: (marks / f"started-{pid}").exists() and (marks / f"started-{pid}").read_text() == "-1")
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        error = result["e"].value
        assert error.status() == "StatusCode.INTERNAL"
        assert "killed by signal 9 (SIGKILL)" in error.message()
        second = ask(1.0)
        np.testing.assert_array_equal(second.as_numpy("OUTPUT0"), [[2, 2, 2, 2]])
        assert int(second.as_numpy("PID")[0, 0]) != pid
        client.close()
    finally:
        server.stop()
    log = "".join(server.lines)
    assert "model 'p' version 1 instance 0: worker for instance 0 loaded" in log
    assert "model 'p' version 1 instance 0: a line on stderr" in log


FAKE_WORKER = textwrap.dedent(
    """
    import socket, struct, sys
    sock = socket.socket(fileno=3)
    reply = bytes.fromhex(sys.argv[1])
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 250)
        if not msg or msg[:1] == b"Q":
            break
        sock.sendall(b"R" if msg[:1] == b"I" else reply)
    """
)


@pytest.mark.parametrize("reply, message", [
    (b"Z", "unexpected message 'Z' from the worker"),
    (b"D", "malformed message from the worker"),
    # One output in block 7 of a batch that was given none.
    (struct.pack("<BxHBBHiQ", ord("D"), 1, 11, 1, 1, 7, 4) + struct.pack("<q", 1) + b"y",
     "the worker named output block 7 for output 'y', which it was not given"),
    # Four floats in a block claimed to hold a [1] FP32 output of 8 bytes.
    (struct.pack("<BxHBBHiQ", ord("D"), 1, 11, 1, 1, 0, 8) + struct.pack("<q", 1) + b"y",
     "output 'y' of shape [1] needs 4 bytes, the worker sent 8"),
])
def test_a_worker_that_breaks_the_protocol_fails_its_batch_and_is_replaced(tmp_path, reply, message):
    from modelserve.engine import ModelEngine

    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    workers = core.ProcessInstances("model 'fake' version 1", [sys.executable, str(script), reply.hex()],
                                    outputs=[("y", "FP32", [1])], spin_us=0)
    with ModelEngine("fake", workers, inputs=[("x", "FP32", [1])], outputs=[("y", "FP32", [1])]) as engine:
        for attempt in (1, 2):
            with pytest.raises(modelserve.InternalError, match=re.escape(message)):
                engine.infer({"x": np.ones(1, np.float32)})
            assert wait_for(lambda: workers.stats()["starts"] == attempt + 1)
        assert workers.stats()["crashes"] == 2
    assert shm_in_use() == 0
