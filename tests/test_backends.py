"""The onnx and torch backends, on tiny models built in each test (onnx.helper, torch.jit.script)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from modelserve.backends import BackendContext, MissingExtraError, get
from modelserve.config import parse_config
from modelserve.errors import InternalError, InvalidArgumentError

# torch 2.13 deprecates TorchScript: torch.jit.script/save/load each issue a DeprecationWarning,
# which pyproject's filterwarnings = error would turn into failures.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is (deprecated|not supported in Python 3\.14):DeprecationWarning"
)

# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def ort():
    return pytest.importorskip("onnxruntime")


@pytest.fixture
def onnx():
    return pytest.importorskip("onnx")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def backend(name, version_dir, config=None, device="cpu"):
    cfg = parse_config(config or {})
    return get(name)(BackendContext(model="m", version=1, version_dir=version_dir, config=cfg, device=device))


# protocol datatype -> (numpy dtype, ONNX element type name)
ONNX_TYPES = {
    "BOOL": (np.bool_, "BOOL"),
    "UINT8": (np.uint8, "UINT8"),
    "UINT16": (np.uint16, "UINT16"),
    "UINT32": (np.uint32, "UINT32"),
    "UINT64": (np.uint64, "UINT64"),
    "INT8": (np.int8, "INT8"),
    "INT16": (np.int16, "INT16"),
    "INT32": (np.int32, "INT32"),
    "INT64": (np.int64, "INT64"),
    "FP16": (np.float16, "FLOAT16"),
    "FP32": (np.float32, "FLOAT"),
    "FP64": (np.float64, "DOUBLE"),
    "BYTES": (object, "STRING"),
    "BF16": (None, "BFLOAT16"),
}


def save_onnx(onnx, path, nodes, inputs, outputs):
    """inputs/outputs: [(name, ONNX element type name, shape)]."""
    h, tp = onnx.helper, onnx.TensorProto

    def info(name, elem, shape):
        return h.make_tensor_value_info(name, getattr(tp, elem), shape)

    graph = h.make_graph(nodes, "g", [info(*i) for i in inputs], [info(*o) for o in outputs])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path / "model.onnx"))


def save_identity(onnx, path, elem, shape=("N", 3)):
    save_onnx(onnx, path, [onnx.helper.make_node("Identity", ["x"], ["y"])], [("x", elem, list(shape))],
              [("y", elem, list(shape))])


def sample(datatype, shape=(2, 3)):
    dtype = ONNX_TYPES[datatype][0]
    if datatype == "BOOL":
        return (np.arange(6).reshape(shape) % 2).astype(bool)
    values = np.arange(6).reshape(shape)
    if np.issubdtype(dtype, np.signedinteger):
        values = values - 3  # negatives too
    if np.issubdtype(dtype, np.floating):
        values = values / 4
    return values.astype(dtype)


# --- onnx ---------------------------------------------------------------------------------------

ROUND_TRIP = [d for d in ONNX_TYPES if d not in ("BYTES", "BF16")]


@pytest.mark.parametrize("datatype", ROUND_TRIP)
def test_onnx_identity_round_trips_datatype(ort, onnx, tmp_path, datatype):
    save_identity(onnx, tmp_path, ONNX_TYPES[datatype][1])
    b = backend("onnx", tmp_path)
    b.load()
    x = sample(datatype)
    out = b.execute({"x": x})
    assert list(out) == ["y"]
    assert out["y"].dtype == x.dtype
    np.testing.assert_array_equal(out["y"], x)


def test_onnx_bytes_round_trip_as_utf8_bytes(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "STRING", shape=("N",))
    b = backend("onnx", tmp_path)
    b.load()
    x = np.array([b"plain", "caf\u00e9 \u2603 \U0001f600".encode(), b""], dtype=object)
    out = b.execute({"x": x})["y"]
    assert out.dtype == object and out.shape == (3,)
    assert list(out) == list(x)
    assert all(type(v) is bytes for v in out)


def test_onnx_bytes_input_that_is_not_utf8_is_invalid_argument(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "STRING", shape=("N",))
    b = backend("onnx", tmp_path)
    b.load()
    with pytest.raises(InvalidArgumentError, match="input 'x'.*not valid UTF-8"):
        b.execute({"x": np.array([b"\xff\xfe"], dtype=object)})


def test_onnx_add_model_computes(ort, onnx, tmp_path):
    save_onnx(onnx, tmp_path, [onnx.helper.make_node("Add", ["a", "b"], ["sum"])],
              [("a", "FLOAT", ["N", 2]), ("b", "FLOAT", ["N", 2])], [("sum", "FLOAT", ["N", 2])])
    b = backend("onnx", tmp_path)
    b.load()
    a = np.array([[1, 2], [3, 4]], np.float32)
    np.testing.assert_array_equal(b.execute({"a": a, "b": a * 10})["sum"], a * 11)


def test_onnx_wrong_input_datatype_is_invalid_argument(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "FLOAT")
    b = backend("onnx", tmp_path)
    b.load()
    with pytest.raises(InvalidArgumentError, match="model 'm' version 1"):
        b.execute({"x": np.zeros((1, 3), np.float64)})


def test_onnx_bfloat16_model_fails_to_load_with_explanation(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "BFLOAT16")
    with pytest.raises(InvalidArgumentError, match="input 'x' is bfloat16.*cast it to float16 or float"):
        backend("onnx", tmp_path).load()


def test_onnx_unloadable_model_file_names_the_file(ort, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(InvalidArgumentError, match="model.onnx: onnxruntime cannot load the model"):
        backend("onnx", tmp_path).load()


def test_onnx_session_threads_from_parameters(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "FLOAT")
    b = backend("onnx", tmp_path, {"parameters": {"intra_op_threads": 3, "inter_op_threads": 2}})
    b.load()
    options = b.session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_onnx_default_threads_split_cpus_between_instances(ort, onnx, tmp_path, monkeypatch):
    from modelserve.backends import onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "usable_cpus", lambda: 8)
    save_identity(onnx, tmp_path, "FLOAT")
    for count, intra in ((1, 8), (3, 2), (16, 1)):
        b = backend("onnx", tmp_path, {"instances": {"count": count}})
        b.load()
        options = b.session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (intra, 1)
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_onnx_invalid_thread_parameter_is_rejected(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "FLOAT")
    with pytest.raises(InvalidArgumentError, match="parameters.intra_op_threads: expected an integer >= 0"):
        backend("onnx", tmp_path, {"parameters": {"intra_op_threads": "four"}}).load()


def test_onnx_pool_threads_do_not_spin_unless_asked(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "FLOAT")
    for parameters, expected in (({}, "0"), ({"allow_spinning": True}, "1")):
        b = backend("onnx", tmp_path, {"parameters": parameters})
        b.load()
        options = b.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    with pytest.raises(InvalidArgumentError, match="parameters.allow_spinning must be true or false, got 'yes'"):
        backend("onnx", tmp_path, {"parameters": {"allow_spinning": "yes"}}).load()


def test_onnx_cuda_device_without_cuda_provider_runs_on_cpu(ort, onnx, tmp_path, caplog):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    save_identity(onnx, tmp_path, "FLOAT")
    b = backend("onnx", tmp_path, device="cuda:0")
    with caplog.at_level(logging.WARNING, logger="modelserve.backends.onnx"):
        b.load()
    assert b.session.get_providers() == ["CPUExecutionProvider"]
    assert "no CUDAExecutionProvider" in caplog.text
    np.testing.assert_array_equal(b.execute({"x": np.ones((1, 3), np.float32)})["y"], np.ones((1, 3)))


def test_onnx_unload_drops_the_session(ort, onnx, tmp_path):
    save_identity(onnx, tmp_path, "FLOAT")
    b = backend("onnx", tmp_path)
    b.load()
    b.unload()
    assert b.session is None
    with pytest.raises(InvalidArgumentError, match="before load"):
        b.execute({"x": np.ones((1, 3), np.float32)})



def save_reshape(onnx, path):
    """y = reshape(x [N, 3], s): a run fails when ``s`` asks for another number of elements."""
    save_onnx(onnx, path, [onnx.helper.make_node("Reshape", ["x", "s"], ["y"])],
              [("x", "FLOAT", ["N", 3]), ("s", "INT64", [2])], [("y", "FLOAT", ["A", "B"])])


RESHAPE_FAILS = {"x": np.zeros((2, 3), np.float32), "s": np.array([5, 5], np.int64)}


def test_onnx_failed_run_is_internal_error_with_onnxruntime_message(ort, onnx, tmp_path):
    save_reshape(onnx, tmp_path)
    b = backend("onnx", tmp_path)
    b.load()
    with pytest.raises(InternalError) as caught:
        b.execute(RESHAPE_FAILS)
    message = str(caught.value)
    assert message.startswith("model 'm' version 1: onnxruntime failed to run the model: [ONNXRuntimeError]")
    assert "cannot be reshaped to the requested shape. Input shape:{2,3}, requested shape:{5,5}" in message
    assert "\n" not in message
    assert isinstance(caught.value.__cause__, ort.capi.onnxruntime_pybind11_state.Fail)


def test_onnx_failed_run_reaches_the_runtime_caller_with_onnxruntime_message(ort, onnx, tmp_path):
    from modelserve import ModelserveError, Runtime

    (tmp_path / "reshape" / "1").mkdir(parents=True)
    save_reshape(onnx, tmp_path / "reshape" / "1")
    (tmp_path / "reshape" / "config.yaml").write_text("backend: onnx\nmax_batch_size: 0\n")
    with Runtime(tmp_path) as rt:
        with pytest.raises(ModelserveError, match=r"model 'reshape' version 1: onnxruntime failed to run the "
                           r"model: .*requested shape:\{5,5\}"):
            rt.infer("reshape", RESHAPE_FAILS)


@pytest.mark.parametrize("level", ["INFO", "WARNING", "ERROR"])
def test_onnx_failed_run_prints_no_onnxruntime_error_line_above_debug(ort, onnx, tmp_path, caplog, capfd, level):
    save_reshape(onnx, tmp_path)
    caplog.set_level(level, logger="modelserve.backends.onnx")
    b = backend("onnx", tmp_path)
    b.load()
    capfd.readouterr()
    with pytest.raises(InternalError):
        b.execute(RESHAPE_FAILS)
    assert "onnxruntime" not in capfd.readouterr().err  # no "\x1b[1;31m... [E:onnxruntime:, ...]" line


@pytest.mark.parametrize("level, severity", [("DEBUG", 1), ("INFO", 2), ("WARNING", 2), ("ERROR", 3),
                                             ("CRITICAL", 4)])
def test_onnx_log_severity_follows_the_log_level(ort, onnx, tmp_path, caplog, level, severity):
    save_identity(onnx, tmp_path, "FLOAT")
    caplog.set_level(level, logger="modelserve.backends.onnx")
    b = backend("onnx", tmp_path)
    b.load()
    assert b.session.get_session_options().log_severity_level == severity
    assert b._run_options.log_severity_level == (1 if level == "DEBUG" else 4)


def _signature_model(onnx, path, first_dim):
    save_onnx(onnx, path, [onnx.helper.make_node("Identity", ["x"], ["y"]),
                           onnx.helper.make_node("Cast", ["x"], ["z"], to=onnx.TensorProto.DOUBLE)],
              [("x", "FLOAT", [first_dim, "H", 4])], [("y", "FLOAT", [first_dim, "H", 4]),
                                                     ("z", "DOUBLE", [first_dim, "H", 4])])


def test_onnx_signature_drops_symbolic_batch_dim_when_batching(ort, onnx, tmp_path):
    _signature_model(onnx, tmp_path, "batch")
    inputs, outputs = get("onnx").signature(tmp_path, parse_config({"max_batch_size": 8}))
    assert [t.as_spec() for t in inputs] == [("x", "FP32", [-1, 4])]
    assert [t.as_spec() for t in outputs] == [("y", "FP32", [-1, 4]), ("z", "FP64", [-1, 4])]


def test_onnx_signature_keeps_batch_dim_as_minus_one_without_batching(ort, onnx, tmp_path):
    _signature_model(onnx, tmp_path, "batch")
    inputs, outputs = get("onnx").signature(tmp_path, parse_config({}))
    assert [t.as_spec() for t in inputs] == [("x", "FP32", [-1, -1, 4])]
    assert [t.as_spec() for t in outputs] == [("y", "FP32", [-1, -1, 4]), ("z", "FP64", [-1, -1, 4])]


def test_onnx_signature_fixed_first_dim_with_batching_is_rejected(ort, onnx, tmp_path):
    _signature_model(onnx, tmp_path, 4)
    with pytest.raises(InvalidArgumentError) as e:
        get("onnx").signature(tmp_path, parse_config({"max_batch_size": 8}))
    text = str(e.value)
    assert "model.onnx" in text and "input 'x'" in text and "[4, 'H', 4]" in text
    assert "cannot batch" in text and "max_batch_size: 0" in text


def test_onnx_signature_fixed_first_dim_without_batching_is_kept(ort, onnx, tmp_path):
    _signature_model(onnx, tmp_path, 4)
    inputs, _ = get("onnx").signature(tmp_path, parse_config({}))
    assert inputs[0].shape == [4, -1, 4]


def test_onnx_signature_maps_every_datatype(ort, onnx, tmp_path):
    types = {d: elem for d, (_, elem) in ONNX_TYPES.items()}
    nodes = [onnx.helper.make_node("Identity", [f"in_{d}"], [f"out_{d}"]) for d in types]
    save_onnx(onnx, tmp_path, nodes, [(f"in_{d}", e, [2]) for d, e in types.items()],
              [(f"out_{d}", e, [2]) for d, e in types.items()])
    inputs, outputs = get("onnx").signature(tmp_path, parse_config({}))
    assert [(t.name, t.datatype, t.shape) for t in inputs] == [(f"in_{d}", d, [2]) for d in types]
    assert [t.datatype for t in outputs] == list(types)


def test_onnx_missing_onnxruntime_names_the_extra(onnx, tmp_path, monkeypatch):
    save_identity(onnx, tmp_path, "FLOAT")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'modelserve\[onnx\]'"):
        backend("onnx", tmp_path).load()
    with pytest.raises(MissingExtraError, match=r"pip install 'modelserve\[onnx\]'"):
        get("onnx").signature(tmp_path, parse_config({}))


def test_torch_missing_torch_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'modelserve\[torch\]'"):
        backend("torch", tmp_path).load()


def test_backend_modules_import_without_frameworks():
    code = (
        "import sys\n"
        "for m in ('onnxruntime', 'onnx', 'torch'): sys.modules[m] = None\n"
        "import modelserve.backends as b\n"
        "assert {'onnx', 'torch', 'python'} <= set(b.registered()), b.registered()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- torch --------------------------------------------------------------------------------------


def save_script(torch, path, module):
    torch.jit.save(torch.jit.script(module), str(path / "model.pt"))


def identity_module(torch):
    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    return Identity()


TORCH_TYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


@pytest.mark.parametrize("datatype", TORCH_TYPES)
def test_torch_identity_round_trips_datatype(torch, tmp_path, datatype):
    save_script(torch, tmp_path, identity_module(torch))
    b = backend("torch", tmp_path, {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3]}],
                                    "outputs": [{"name": "y", "datatype": datatype, "shape": [2, 3]}]})
    b.load()
    x = sample(datatype)
    out = b.execute({"x": x})
    assert list(out) == ["y"]
    assert out["y"].dtype == x.dtype
    np.testing.assert_array_equal(out["y"], x)


def test_torch_bf16_round_trips_from_uint16_bits(torch, tmp_path):
    save_script(torch, tmp_path, identity_module(torch))
    b = backend("torch", tmp_path, {"inputs": [{"name": "x", "datatype": "BF16", "shape": [3]}],
                                    "outputs": [{"name": "y", "datatype": "BF16", "shape": [3]}]})
    b.load()
    bits = np.array([[0x3F80, 0x4000, 0xC040], [0x0000, 0x7F80, 0x3E00]], np.uint16)  # 1, 2, -3, 0, inf, .125
    y = b.execute({"x": bits})["y"]
    assert y.dtype.itemsize == 2 and y.shape == (2, 3)
    np.testing.assert_array_equal(y.view(np.uint16), bits)


def test_torch_bf16_from_ml_dtypes_is_computed_on(torch, tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.dtype == torch.bfloat16
            return x * 2

    save_script(torch, tmp_path, Double())
    b = backend("torch", tmp_path)
    b.load()
    x = np.array([1.0, -3.0, 0.125], ml_dtypes.bfloat16)
    y = b.execute({"x": x})["OUTPUT0"]
    assert y.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y.astype(np.float32), [2.0, -6.0, 0.25])


def test_torch_inputs_follow_config_order(torch, tmp_path):
    class Sub(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a - b

    save_script(torch, tmp_path, Sub())
    b = backend("torch", tmp_path, {"inputs": [{"name": "A", "datatype": "FP32", "shape": [1]},
                                               {"name": "B", "datatype": "FP32", "shape": [1]}]})
    b.load()
    out = b.execute({"B": np.array([1.0], np.float32), "A": np.array([10.0], np.float32)})
    np.testing.assert_array_equal(out["OUTPUT0"], [9.0])


def test_torch_tuple_outputs_take_config_names(torch, tmp_path):
    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x + 1, (x * 2).to(torch.int64)

    save_script(torch, tmp_path, Two())
    b = backend("torch", tmp_path, {"outputs": [{"name": "plus", "datatype": "FP32", "shape": [2]},
                                                {"name": "twice", "datatype": "INT64", "shape": [2]}]})
    b.load()
    out = b.execute({"x": np.array([1.0, 2.0], np.float32)})
    assert list(out) == ["plus", "twice"]
    np.testing.assert_array_equal(out["plus"], [2.0, 3.0])
    assert out["twice"].dtype == np.int64
    np.testing.assert_array_equal(out["twice"], [2, 4])


def test_torch_outputs_without_config_are_named_output_n(torch, tmp_path):
    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x, -x]

    save_script(torch, tmp_path, Two())
    b = backend("torch", tmp_path)
    b.load()
    out = b.execute({"x": np.array([1.0], np.float32)})
    assert list(out) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT1"], [-1.0])


def test_torch_dict_outputs_keep_their_keys(torch, tmp_path):
    class Named(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"total": x.sum(dim=1), "largest": x.max(dim=1).values}

    save_script(torch, tmp_path, Named())
    b = backend("torch", tmp_path)
    b.load()
    out = b.execute({"x": np.array([[1, 5], [7, 2]], np.int32)})
    assert set(out) == {"total", "largest"}
    np.testing.assert_array_equal(out["total"], [6, 9])
    np.testing.assert_array_equal(out["largest"], [5, 7])


def test_torch_output_count_mismatch_names_expected_and_actual(torch, tmp_path):
    save_script(torch, tmp_path, identity_module(torch))
    b = backend("torch", tmp_path, {"outputs": [{"name": "a", "datatype": "FP32", "shape": [1]},
                                                {"name": "b", "datatype": "FP32", "shape": [1]}]})
    b.load()
    with pytest.raises(InternalError, match=r"returned 1 output\(s\) but config.yaml declares 2 \(a, b\)"):
        b.execute({"x": np.ones(1, np.float32)})


def test_torch_read_only_input_is_accepted_without_warning(torch, tmp_path):
    save_script(torch, tmp_path, identity_module(torch))
    b = backend("torch", tmp_path)
    b.load()
    x = np.frombuffer(np.arange(4, dtype=np.float32).tobytes(), np.float32)
    assert not x.flags.writeable
    np.testing.assert_array_equal(b.execute({"x": x})["OUTPUT0"], [0, 1, 2, 3])


def test_torch_bytes_in_config_fails_the_load(torch, tmp_path):
    save_script(torch, tmp_path, identity_module(torch))
    b = backend("torch", tmp_path, {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]})
    with pytest.raises(InvalidArgumentError, match="'text' declared BYTES"):
        b.load()


def test_torch_num_threads_parameter_sets_torch_threads(torch, tmp_path):
    save_script(torch, tmp_path, identity_module(torch))
    before = torch.get_num_threads()
    try:
        backend("torch", tmp_path, {"parameters": {"num_threads": 1}}).load()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_torch_cuda_device_without_cuda_runs_on_cpu(torch, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    save_script(torch, tmp_path, identity_module(torch))
    b = backend("torch", tmp_path, device="cuda:0")
    with caplog.at_level(logging.WARNING, logger="modelserve.backends.torch"):
        b.load()
    assert b.device.type == "cpu" and b.stream is None
    assert "running on the CPU" in caplog.text
    np.testing.assert_array_equal(b.execute({"x": np.ones(2, np.float32)})["OUTPUT0"], [1, 1])


def test_torch_signature_is_none(tmp_path):
    assert get("torch").signature(tmp_path, parse_config({})) is None


def test_torch_non_torchscript_file_fails_the_load(torch, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(InvalidArgumentError, match="model.pt: torch.jit.load cannot load the model"):
        backend("torch", tmp_path).load()
