"""Model repository: lifecycle, swaps under load, rollback, poll mode, half-written versions."""

import shutil
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import modelserve
from modelserve import Runtime, VersionState
from modelserve.repository import LoadError

CONFIG = """
max_batch_size: 8
inputs: [{name: INPUT0, datatype: FP32, shape: [4]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [4]}]
"""

MODEL = """
import time
import numpy as np

class Model:
    def load(self, context):
        {load}
        self.add = np.float32({add})

    def execute(self, inputs):
        {execute}
        return {{"OUTPUT0": inputs["INPUT0"] + self.add}}
"""


def write_version(repo: Path, model: str, version: int, add: float, load: str = "pass", execute: str = "pass"):
    vdir = repo / model / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.py").write_text(MODEL.format(add=add, load=load, execute=execute))
    return vdir


def write_config(repo: Path, model: str, extra: str = ""):
    (repo / model).mkdir(parents=True, exist_ok=True)
    (repo / model / "config.yaml").write_text(CONFIG + textwrap.dedent(extra))


X = np.zeros((1, 4), np.float32)


def answer(rt, model="m", **kw):
    return float(rt.infer(model, {"INPUT0": X}, **kw)["OUTPUT0"][0, 0])


class Load:
    """Threads sending requests until stopped; records every answer and every error."""

    def __init__(self, rt, threads=8, model="m"):
        self.rt, self.model = rt, model
        self.answers = [[] for _ in range(threads)]
        self.errors = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]

    def run(self, i):
        while not self.stop.is_set():
            try:
                self.answers[i].append(answer(self.rt, self.model))
            except Exception as e:  # collected and asserted on by the test
                self.errors.append(e)

    def __enter__(self):
        for t in self.threads:
            t.start()
        while min(len(a) for a in self.answers) < 5:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        time.sleep(0.1)
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest.fixture
def repo(tmp_path):
    write_config(tmp_path, "m")
    write_version(tmp_path, "m", 1, add=1)
    return tmp_path


def states(rt, model="m", version=1):
    return [h["state"] for h in rt.model_versions(model)["versions"][version]["history"]]


def test_a_version_goes_loading_warming_ready(repo):
    with Runtime(repo) as rt:
        assert states(rt) == ["LOADING", "WARMING", "READY"]
        info = rt.model_versions("m")["versions"][1]
        assert info["phases"]["load_s"] >= 0 and "warmup_s" in info["phases"]
        assert answer(rt) == 1.0
        assert rt.ready() and rt.model_ready("m") and rt.model_ready("m", 1)


def test_superseded_version_drains_and_unloads(repo):
    write_config(repo, "m", "keep_previous_versions: 0\n")
    with Runtime(repo, model_control_mode="explicit", load_models=["m"]) as rt:
        write_version(repo, "m", 2, add=2)
        rt.load_model("m")
        assert states(rt, version=2) == ["LOADING", "WARMING", "READY"]
        assert answer(rt) == 2.0
        assert rt.repository.get("m").ready_versions() == [2]
        assert states(rt, version=1) == ["LOADING", "WARMING", "READY", "DRAINING", "UNLOADED"]
        assert rt.model_versions("m")["versions"][1]["reason"] == ""
        assert "drain_s" in rt.model_versions("m")["versions"][1]["phases"]


def test_load_failure_is_failed_with_the_reason(repo):
    write_version(repo, "broken", 1, add=0, load="raise RuntimeError('weights are corrupt')")
    write_config(repo, "broken")
    with Runtime(repo) as rt:
        info = rt.model_versions("broken")["versions"][1]
        assert [h["state"] for h in info["history"]] == ["LOADING", "FAILED"]
        assert "weights are corrupt" in info["reason"]
        assert answer(rt) == 1.0  # one model failing never affects the others
        assert not rt.ready() and not rt.model_ready("broken")
        with pytest.raises(modelserve.UnavailableError, match="weights are corrupt"):
            answer(rt, "broken")
        entry = [e for e in rt.repository_index() if e["name"] == "broken"][0]
        assert entry["state"] == "FAILED" and "weights are corrupt" in entry["reason"]


def test_warmup_failure_is_a_load_failure(repo):
    write_config(repo, "w", "warmup: [{batch_size: 2, count: 1, data: random}]\n")
    write_version(repo, "w", 1, add=0, execute="raise ValueError('no warmup for me')")
    with Runtime(repo) as rt:
        info = rt.model_versions("w")["versions"][1]
        assert [h["state"] for h in info["history"]] == ["LOADING", "WARMING", "FAILED"]
        assert "warmup[0] failed" in info["reason"] and "no warmup for me" in info["reason"]


def test_warmup_runs_before_ready(repo):
    (repo / "m" / "1" / "model.py").write_text(
        MODEL.format(add=1, load="self.rows = 0", execute="self.rows += len(inputs['INPUT0']); Model.seen = self.rows")
    )
    write_config(repo, "m", "warmup: [{batch_size: 3, count: 2, data: zero}]\n")
    with Runtime(repo) as rt:
        model_cls = type(rt.repository.get("m").versions[1]._backends[0].model)
        assert model_cls.seen == 6  # two warmup requests of 3 rows (count 2 x 1 instance)
        assert answer(rt) == 1.0


def test_illegal_transition_is_refused(repo):
    with Runtime(repo) as rt:
        mv = rt.repository.get("m").versions[1]
        with pytest.raises(modelserve.InternalError, match="illegal transition READY -> WARMING"):
            mv._move(VersionState.WARMING)


def test_swap_under_load_fails_no_request_and_switches_outputs(repo):
    write_config(repo, "m", "keep_previous_versions: 0\n")
    with Runtime(repo, model_control_mode="explicit", load_models=["m"]) as rt:
        with Load(rt) as load:
            write_version(repo, "m", 2, add=2)
            rt.load_model("m")
            seen_after = len(load.answers[0])
            while len(load.answers[0]) < seen_after + 5:
                time.sleep(0.01)
        assert load.errors == []
        for answers in load.answers:
            assert set(answers) <= {1.0, 2.0}
            switched = answers.index(2.0)
            assert set(answers[switched:]) == {2.0}  # never back to the old version
            assert set(answers[:switched]) == {1.0}
        history = [t.state for t in rt.repository.get("m").versions[2].history]
        assert history[-1] is VersionState.READY
        assert rt.repository.get("m").ready_versions() == [2]


def test_failing_new_version_keeps_the_old_one_serving(repo):
    with Runtime(repo, model_control_mode="explicit", load_models=["m"]) as rt:
        with Load(rt) as load:
            write_version(repo, "m", 2, add=2, load="raise ImportError('missing dependency')")
            with pytest.raises(LoadError, match="missing dependency"):
                rt.load_model("m")
        assert load.errors == []
        assert {a for answers in load.answers for a in answers} == {1.0}
        assert rt.model_versions("m")["versions"][2]["state"] == "FAILED"
        assert rt.model_ready("m") and not rt.model_ready("m", 2)


def test_rollback_under_load_is_immediate(repo):
    write_version(repo, "m", 2, add=2)
    write_config(repo, "m", "version_policy: {latest: 1}\nkeep_previous_versions: 1\n")
    with Runtime(repo, model_control_mode="explicit", load_models=["m"]) as rt:
        # Startup loaded version 2 only; load 1 by policy change is not needed: use a swap.
        assert answer(rt) == 2.0
    shutil.rmtree(repo / "m" / "2")
    with Runtime(repo, model_control_mode="explicit", load_models=["m"]) as rt:
        write_version(repo, "m", 2, add=2)
        rt.load_model("m")  # 1 stays READY as the previous version
        assert rt.repository.get("m").ready_versions() == [1, 2]
        with Load(rt) as load:
            assert rt.rollback("m") == 1
            assert answer(rt) == 1.0  # at once: the next request goes to version 1
        assert load.errors == []
        for answers in load.answers:
            if 1.0 in answers:
                assert set(answers[answers.index(1.0):]) == {1.0}
        assert rt.model_versions("m")["pinned"] is True
        assert rt.rollback("m", 2) == 2
        assert answer(rt) == 2.0


def test_rollback_needs_a_ready_version(repo):
    with Runtime(repo) as rt:
        with pytest.raises(modelserve.UnavailableError, match="no READY version older than 1"):
            rt.rollback("m")
        with pytest.raises(modelserve.UnavailableError, match="version 7 is not loaded"):
            rt.rollback("m", 7)


def test_labels_route_requests(repo):
    write_version(repo, "m", 2, add=2)
    write_config(repo, "m", "version_policy: {all: true}\nlabels: {stable: 1}\n")
    with Runtime(repo) as rt:
        assert answer(rt) == 2.0
        assert answer(rt, version="stable") == 1.0
        assert answer(rt, version=1) == 1.0 and answer(rt, version="2") == 2.0
        rt.set_label("m", "stable", 2)
        assert answer(rt, version="stable") == 2.0
        assert rt.rollback("m", 1, label="stable") == 1
        assert answer(rt, version="stable") == 1.0
        with pytest.raises(modelserve.NotFoundError, match="no version or label 'canary'"):
            answer(rt, version="canary")
        with pytest.raises(modelserve.NotFoundError, match="has no version 9"):
            answer(rt, version=9)


def test_version_policies(repo):
    for v in (2, 3):
        write_version(repo, "m", v, add=v)
    for policy, expected in (("{latest: 2}", [2, 3]), ("{all: true}", [1, 2, 3]), ("{specific: [1, 3]}", [1, 3])):
        write_config(repo, "m", f"version_policy: {policy}\n")
        with Runtime(repo) as rt:
            assert rt.repository.get("m").ready_versions() == expected, policy
            assert answer(rt) == float(expected[-1])


def test_poll_mode_loads_new_and_unloads_removed_versions(repo):
    with Runtime(repo, model_control_mode="poll", poll_interval=3600) as rt:
        poll = rt.repository.poll_once
        write_version(repo, "m", 2, add=2)
        poll()  # first sight of version 2: not loaded yet (Note [Half-written versions])
        assert answer(rt) == 1.0
        poll()  # unchanged since: settled
        assert answer(rt) == 2.0
        shutil.rmtree(repo / "m" / "2")
        poll()
        assert answer(rt) == 1.0  # version 1 was kept loaded as the previous version
        assert rt.model_versions("m")["versions"][2]["state"] == "UNLOADED"


def test_poll_mode_never_loads_a_half_written_version(repo):
    with Runtime(repo, model_control_mode="poll", poll_interval=3600) as rt:
        poll = rt.repository.poll_once
        vdir = repo / "m" / "2"
        vdir.mkdir()
        (vdir / "model.py").write_text("import numpy as np\nclass Mo")  # a copy in progress
        poll()
        (vdir / "model.py").write_text(MODEL.format(add=2, load="pass", execute="pass")[:40])
        poll()  # still changing between scans
        assert answer(rt) == 1.0
        assert 2 not in rt.model_versions("m")["versions"]
        write_version(repo, "m", 2, add=2)  # the copy completes
        poll()
        assert 2 not in rt.model_versions("m")["versions"]
        poll()
        assert answer(rt) == 2.0


def test_poll_mode_reloads_a_changed_config(repo):
    with Runtime(repo, model_control_mode="poll", poll_interval=3600) as rt:
        write_config(repo, "m", "dynamic_batching: {max_queue_size: 7}\n")
        rt.repository.poll_once()
        rt.repository.poll_once()
        assert rt.model_config("m")["dynamic_batching"]["max_queue_size"] == 7
        assert answer(rt) == 1.0


def test_poll_mode_keeps_serving_through_a_broken_config(repo):
    with Runtime(repo, model_control_mode="poll", poll_interval=3600) as rt:
        write_config(repo, "m", "max_batch_sise: 3\n")
        rt.repository.poll_once()
        rt.repository.poll_once()
        assert answer(rt) == 1.0
        assert "did you mean 'max_batch_size'" in " ".join(rt.repository.errors["m"])


def test_explicit_mode_loads_only_what_is_asked(repo):
    write_config(repo, "other")
    write_version(repo, "other", 1, add=5)
    with Runtime(repo, model_control_mode="explicit", load_models=["m"]) as rt:
        with pytest.raises(modelserve.NotFoundError, match="model 'other' is not loaded"):
            answer(rt, "other")
        rt.load_model("other")
        assert answer(rt, "other") == 5.0
        rt.unload_model("other")
        with pytest.raises(modelserve.NotFoundError):
            answer(rt, "other")
        with pytest.raises(modelserve.NotFoundError, match="not found in repository"):
            rt.load_model("nope")


def test_load_and_unload_need_explicit_mode(repo):
    with Runtime(repo) as rt:
        with pytest.raises(modelserve.UnavailableError, match="model control mode is 'none'"):
            rt.load_model("m")


def test_metadata_config_statistics_and_index(repo):
    with Runtime(repo) as rt:
        answer(rt)
        meta = rt.model_metadata("m")
        assert meta == {
            "name": "m",
            "versions": ["1"],
            "platform": "python",
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]}],
        }
        config = rt.model_config("m")
        assert config["max_batch_size"] == 8 and config["version_policy"]["latest"] == 1
        (stats,) = rt.model_statistics("m")
        assert stats["version"] == "1" and stats["success_count"] >= 1
        assert rt.repository_index() == [{"name": "m", "version": "1", "state": "READY", "reason": ""}]


def test_bad_request_names_model_version_and_tensor(repo):
    with Runtime(repo) as rt:
        with pytest.raises(modelserve.InvalidArgumentError, match=r"model 'm' version 1: input 'INPUT0': expected datatype FP32, got INT64"):
            rt.infer("m", {"INPUT0": np.zeros((1, 4), np.int64)})
        with pytest.raises(modelserve.NotFoundError, match="model 'zzz' is not loaded"):
            rt.infer("zzz", {"INPUT0": X})


def test_runtime_is_safe_from_many_threads_and_tasks(repo):
    import asyncio

    with Runtime(repo) as rt:
        async def many():
            outs = await asyncio.gather(*(rt.infer_async("m", {"INPUT0": np.full((1, 4), i, np.float32)}) for i in range(100)))
            return [float(o["OUTPUT0"][0, 0]) for o in outs]

        results = {}

        def thread(i):
            results[i] = asyncio.run(many())

        threads = [threading.Thread(target=thread, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(4):
            assert results[i] == [float(v + 1) for v in range(100)]


def test_close_drains_queued_requests(repo):
    (repo / "m" / "1" / "model.py").write_text(MODEL.format(add=1, load="pass", execute="time.sleep(0.05)"))
    rt = Runtime(repo)
    version = rt.repository.get("m").versions[1]
    pending = [rt.submit("m", {"INPUT0": X}) for _ in range(5)]
    rt.close()
    for p in pending:
        assert p.wait(10)
        assert float(p.outputs()["OUTPUT0"][0, 0]) == 1.0
    assert [t.state.value for t in version.history][-2:] == ["DRAINING", "UNLOADED"]
    assert not rt.live()
