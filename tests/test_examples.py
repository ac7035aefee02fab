"""The bundled example repository loads and answers correctly; the README's examples run."""

import re
from pathlib import Path

import numpy as np
import pytest

import modelserve

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def rt():
    with modelserve.Runtime(EXAMPLES) as runtime:
        yield runtime


def bare(model, version=1):
    return ort.InferenceSession(str(EXAMPLES / model / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])


def test_every_example_is_ready(rt):
    assert rt.ready()
    index = rt.repository_index()
    assert {(e["name"], e["version"]) for e in index} == {
        ("add_sub", "1"), ("digits", "1"), ("mlp", "1"), ("torch_linear", "1"), ("recommender", "1"), ("recommender", "2"),
        ("storyteller", "1"),
    }
    assert {e["state"] for e in index} == {"READY"}


def test_the_example_repository_validates():
    assert modelserve.repository.validate_repository(EXAMPLES) == []


def test_the_storyteller_learned_its_text(rt):
    """Greedy continuations of the first half of training sentences give back most of the second
    half (examples/build_models.py trained it on examples/text/harbor_stories.txt)."""
    from modelserve.generation import SamplingParams

    lines = [line for line in (ROOT / "examples" / "text" / "harbor_stories.txt").read_text().splitlines() if line]
    right = total = 0
    for line in lines[::3]:
        words = line.split(" ")
        half = len(words) // 2
        out = rt.generate("storyteller", " ".join(words[:half]), SamplingParams(max_tokens=40, temperature=0))
        got = out.text.strip().split(" ")
        right += sum(1 for a, b in zip(words[half:], got) if a == b)
        total += len(words) - half
    assert right / total >= 0.8, (right, total)


def test_add_sub(rt):
    a = np.random.default_rng(0).random((5, 16), dtype=np.float32)
    b = np.ones((5, 16), np.float32)
    out = rt.infer("add_sub", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)


def test_digits_classifies_like_its_onnx_model(rt):
    x = np.random.default_rng(1).random((6, 64), dtype=np.float32)
    out = rt.infer("digits", {"INPUT0": x})
    label, probs = bare("digits").run(None, {"INPUT0": x})
    assert out["LABEL"].shape == (6, 1) and out["PROBABILITIES"].shape == (6, 10)
    np.testing.assert_array_equal(out["LABEL"].ravel(), label.ravel())
    np.testing.assert_allclose(out["PROBABILITIES"], probs, rtol=1e-5)
    np.testing.assert_allclose(out["PROBABILITIES"].sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(out["LABEL"].ravel(), out["PROBABILITIES"].argmax(axis=1))


def test_mlp_matches_the_bare_session(rt):
    x = np.random.default_rng(2).random((33, 256), dtype=np.float32)
    out = rt.infer("mlp", {"INPUT0": x})
    (expected,) = bare("mlp").run(None, {"INPUT0": x})
    np.testing.assert_allclose(out["OUTPUT0"], expected, rtol=1e-4, atol=1e-5)


def test_torch_linear_gives_probabilities(rt):
    out = rt.infer("torch_linear", {"INPUT0": np.arange(8, dtype=np.float32).reshape(2, 4)})
    assert out["OUTPUT0"].shape == (2, 3) and out["OUTPUT0"].dtype == np.float32
    np.testing.assert_allclose(out["OUTPUT0"].sum(axis=1), 1.0, rtol=1e-5)


def test_recommender_serves_two_versions_and_a_stable_label(rt):
    users = np.array([[7], [42], [999]], dtype=np.int64)
    latest = rt.infer("recommender", {"USER_ID": users})
    stable = rt.infer("recommender", {"USER_ID": users}, version="stable")
    for version, out in ((2, latest), (1, stable)):
        scores, items = bare("recommender", version).run(None, {"USER_ID": users})
        np.testing.assert_array_equal(out["ITEMS"], items)
        np.testing.assert_allclose(out["SCORES"], scores, rtol=1e-5)
        assert (np.diff(out["SCORES"], axis=1) <= 0).all()  # best first
    assert not np.array_equal(latest["ITEMS"], stable["ITEMS"])
    assert rt.model_metadata("recommender")["versions"] == ["1", "2"]


def python_blocks(path, client=False):
    """The file's python code blocks: those that talk to a running server (they use tritonclient)
    when ``client``, else the self-contained ones."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return [b for b in blocks if ("tritonclient" in b) == client]


@pytest.mark.parametrize("index", range(len(python_blocks(ROOT / "README.md"))))
def test_readme_python_examples_run(index, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = python_blocks(ROOT / "README.md")[index]
    exec(compile(code, f"README.md[python block {index}]", "exec"), {"__name__": "readme"})


def test_examples_readme_request_runs(monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(ROOT)
    (code,) = python_blocks(ROOT / "examples" / "README.md")
    exec(compile(code, "examples/README.md", "exec"), {"__name__": "readme"})


# The distribution that provides each top-level module the README's snippets import.
DISTRIBUTIONS = {"numpy": "numpy", "tritonclient": "tritonclient", "modelserve": "modelserve", "yaml": "pyyaml",
                 "grpc": "grpcio", "matplotlib": "matplotlib", "onnxruntime": "onnxruntime", "torch": "torch"}


def test_the_first_command_installs_what_the_readme_snippets_import():
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = {re.split(r"[\[<>=!~ ;]", d)[0].lower() for d in project["dependencies"] + project["optional-dependencies"]["examples"]}
    installed.add("modelserve")
    assert 'pip install ".[examples]"' in (ROOT / "README.md").read_text(), "the first command changed; update this test"
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    modules = {m for b in blocks for m in re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", b, flags=re.M)}
    for module in sorted(modules - set(sys.stdlib_module_names)):
        assert module in DISTRIBUTIONS, f"README imports {module}: add its distribution to DISTRIBUTIONS"
        assert DISTRIBUTIONS[module] in installed, (
            f"README imports {module} but pip install \".[examples]\" does not install {DISTRIBUTIONS[module]}"
        )
