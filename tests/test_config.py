"""config.yaml validation: every broken config is refused with an error that names the file and
the offending key, and ``modelserve validate`` lists them all."""

import subprocess
import sys
import textwrap

import pytest

from modelserve.cli import main
from modelserve.config import ConfigError, load_config, parse_config

GOOD = {
    "max_batch_size": 8,
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [4]}],
}

# (broken config, the key path the error must name, a fragment of what it must say)
BROKEN = [
    ({"max_batch_sise": 8}, "max_batch_sise", "did you mean 'max_batch_size'"),
    ({"max_batch_size": -1}, "max_batch_size", "greater than or equal to 0, got -1"),
    ({"max_batch_size": "64"}, "max_batch_size", "valid integer"),
    ({"backend": "onxx"}, "backend", "did you mean 'onnx'"),
    ({"inputs": [{"name": "A", "datatype": "fp32", "shape": [4]}]}, "inputs[0].datatype", "did you mean 'FP32'"),
    ({"inputs": [{"name": "A", "datatype": "FP32", "shape": [0]}]}, "inputs[0].shape", "got [0]"),
    ({"inputs": [{"name": "A", "datatype": "FP32", "shape": [-2]}]}, "inputs[0].shape", "-1 for a variable"),
    ({"inputs": [{"name": "A", "datatype": "FP32"}]}, "inputs[0].shape", "required key is missing"),
    ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1]}]}, "inputs[0].name", "at least 1 character"),
    ({"inputs": [{"name": "A", "datatype": "FP32", "shape": [1], "dims": [1]}]}, "inputs[0].dims", "unknown key"),
    ({"outputs": [{"name": "A", "datatype": "FP33", "shape": [1]}]}, "outputs[0].datatype", "got 'FP33'"),
    ({**GOOD, "outputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4]}]}, "(top level)", "['INPUT0'] appear more than once"),
    ({"inputs": {"name": "A"}}, "inputs", "valid list"),
    ({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay": 100}}, "dynamic_batching.max_queue_delay", "did you mean 'max_queue_delay_us'"),
    ({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_us": -5}}, "dynamic_batching.max_queue_delay_us", "got -5"),
    ({"max_batch_size": 8, "dynamic_batching": {"preferred_batch_sizes": [4, 0]}}, "dynamic_batching.preferred_batch_sizes[1]", "got 0"),
    ({"max_batch_size": 8, "dynamic_batching": {"preferred_batch_sizes": [16]}}, "(top level)", "16 is not"),
    ({"max_batch_size": 8, "dynamic_batching": {"priority_levels": 0}}, "dynamic_batching.priority_levels", "got 0"),
    ({"max_batch_size": 8, "dynamic_batching": {"priority_levels": 2, "default_priority_level": 3}}, "dynamic_batching", "default_priority_level 3"),
    ({"max_batch_size": 8, "dynamic_batching": {"max_queue_size": "big"}}, "dynamic_batching.max_queue_size", "got 'big'"),
    ({"instances": {"count": 0}}, "instances.count", "got 0"),
    ({"instances": {"device": "tpu"}}, "instances.device", "'auto', 'cpu' or 'gpu'"),
    ({"instances": {"cnt": 2}}, "instances.cnt", "did you mean 'count'"),
    ({"version_policy": {"latest": 1, "all": True}}, "version_policy", "exactly one of latest, all, specific"),
    ({"version_policy": {}}, "version_policy", "exactly one of latest, all, specific"),
    ({"version_policy": {"latest": 0}}, "version_policy.latest", "got 0"),
    ({"version_policy": {"specific": []}}, "version_policy", "non-empty list"),
    ({"version_policy": {"all": False}}, "version_policy", "all: true"),
    ({"version_policy": {"newest": 1}}, "version_policy.newest", "unknown key"),
    ({"labels": {"stable": 0}}, "labels.stable", "got 0"),
    ({"labels": {"latest": 1}}, "labels", "'latest'"),
    ({"labels": {"3": 1}}, "labels", "not numbers"),
    ({"labels": ["stable"]}, "labels", "valid dictionary"),
    ({"keep_previous_versions": -1}, "keep_previous_versions", "got -1"),
    ({"warmup": [{"data": "noise"}]}, "warmup[0].data", "'zero', 'random' or 'file'"),
    ({"warmup": [{"data": "file"}]}, "warmup[0]", "'file' is required"),
    ({"warmup": [{"batch_size": 0}]}, "warmup[0].batch_size", "got 0"),
    ({"max_batch_size": 4, "warmup": [{"batch_size": 8}]}, "(top level)", "warmup batch_size <= max_batch_size=4"),
    ({"warmup": [{"count": 1, "rows": 2}]}, "warmup[0].rows", "unknown key"),
    ({"parameters": [1, 2]}, "parameters", "valid dictionary"),
]


@pytest.mark.parametrize("data, key, fragment", BROKEN, ids=[b[1] + ":" + b[2][:20] for b in BROKEN])
def test_broken_config_error_names_file_and_key(data, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="models/m/config.yaml")
    matching = [e for e in info.value.errors if e.startswith(f"models/m/config.yaml: {key}:")]
    assert matching, info.value.errors
    assert any(fragment in e for e in matching), info.value.errors


def test_the_corpus_is_large_enough():
    assert len(BROKEN) >= 20


def test_every_error_in_a_file_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config({"max_batch_sise": 1, "instances": {"count": 0}, "labels": {"a": 0}})
    assert len(info.value.errors) == 3


def test_defaults_fill_a_minimal_config():
    config = parse_config({})
    assert config.max_batch_size == 0
    assert config.instances.count == 1 and config.instances.device == "auto"
    assert config.version_policy.latest == 1
    assert config.keep_previous_versions == 1
    assert config.dynamic_batching is None and config.warmup == []


def test_the_design_example_is_valid(tmp_path):
    (tmp_path / "config.yaml").write_text(textwrap.dedent("""
        backend: onnx
        max_batch_size: 64
        inputs:
          - {name: INPUT0, datatype: FP32, shape: [16]}
        outputs:
          - {name: OUTPUT0, datatype: FP32, shape: [16]}
        dynamic_batching:
          max_queue_delay_us: 500
          preferred_batch_sizes: [16, 32]
          max_queue_size: 1024
          default_timeout_us: 0
          priority_levels: 1
        instances: {count: 1, device: auto}
        version_policy: {latest: 1}
        labels: {stable: 1}
        warmup: [{batch_size: 4, count: 2, data: random}]
        parameters: {intra_op_threads: 2}
    """))
    config = load_config(tmp_path)
    assert config.backend == "onnx" and config.dynamic_batching.preferred_batch_sizes == [16, 32]


def test_invalid_yaml_names_the_line(tmp_path):
    (tmp_path / "config.yaml").write_text("max_batch_size: 8\ninputs: [\n")
    with pytest.raises(ConfigError, match=r"config.yaml: not valid YAML \(line \d+"):
        load_config(tmp_path)


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got list"):
        load_config(tmp_path)


def test_missing_config_file_means_defaults(tmp_path):
    assert load_config(tmp_path).max_batch_size == 0


# --- modelserve validate ---------------------------------------------------------------------


def make_repo(root, models):
    for name, (config, files) in models.items():
        (root / name).mkdir()
        if config is not None:
            (root / name / "config.yaml").write_text(textwrap.dedent(config))
        for rel, text in files.items():
            (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / name / rel).write_text(text)


def test_validate_lists_every_error_and_exits_1(tmp_path, capsys):
    make_repo(tmp_path, {
        "typo": ("max_batch_sise: 4\n", {"1/model.py": "class Model: pass\n"}),
        "noversion": ("max_batch_size: 4\n", {}),
        "nofile": ("max_batch_size: 4\n", {"1/README": "empty"}),
        "badlabel": ("labels: {stable: 7}\n", {"1/model.py": "class Model: pass\n"}),
        "ok": ("max_batch_size: 4\n", {"1/model.py": "class Model: pass\n"}),
    })
    assert main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "4 errors" in err
    assert "max_batch_sise: unknown key (did you mean 'max_batch_size'?)" in err
    assert "noversion: no version folders" in err
    assert "nofile/1: no model file" in err
    assert "labels.stable: version 7 has no folder" in err


def test_validate_checks_model_signatures(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (tmp_path / "m" / "1").mkdir(parents=True)
    onnx.save(model, tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.yaml").write_text(
        "max_batch_size: 4\ninputs: [{name: X, datatype: FP16, shape: [4]}]\n"
    )
    assert main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "inputs[0] 'X': config says FP16 [4], the model" in err and "says FP32 [4]" in err


def test_validate_passes_a_good_repository_as_a_console_script(tmp_path):
    make_repo(tmp_path, {"ok": ("max_batch_size: 4\n", {"1/model.py": "class Model: pass\n"})})
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from modelserve.cli import main; sys.exit(main())", "validate", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
