"""Builds the binary model files of the bundled example repository ``examples/models/``.

Run from the repository root (or anywhere; paths are relative to this file)::

    python examples/build_models.py            # rebuild every model file, then verify them all
    python examples/build_models.py --check    # only verify the files already there

Development only: the generated files are committed, so serving the examples needs no download
and none of this script's packages beyond the backends' own (onnxruntime, torch). Rebuilding
needs numpy, scikit-learn, skl2onnx, onnx and torch; verifying needs onnxruntime too, and
modelserve itself for the config.yaml checks (skipped with a note when it is not importable).

What it builds (every random number comes from a fixed seed, so a rebuild with the same package
versions gives the same ONNX bytes; ``--check`` prints a SHA-256 of each file to compare. The
TorchScript archive is rewritten only when its code or weights change, since torch.jit.save
never writes the same bytes twice):

- ``digits/1/model.onnx``       scikit-learn LogisticRegression on the bundled ``load_digits``
                                 8x8 images (no download), converted with skl2onnx
- ``mlp/1/model.onnx``          a 256-512-512-10 ReLU MLP with random weights (onnx.helper)
- ``torch_linear/1/model.pt``   TorchScript Linear(4, 3) + softmax
- ``recommender/{1,2}/model.onnx``  user embedding lookup, scores against every item, top-10;
                                 version 2 has re-trained (perturbed) item embeddings

- ``storyteller/1/``             a small GPT-2 (2 layers, 128 wide, 128 positions; ``model.safetensors``,
                                 ``config.json``) and its byte-level BPE ``tokenizer.json`` (512 tokens),
                                 both trained here on ``examples/text/harbor_stories.txt``, text written for
                                 this repository; about a minute on two cores. It learns the text by heart:
                                 the check continues the first half of every sentence greedily and counts
                                 how much of the second half comes back

``add_sub`` is a Python-backend model (``add_sub/1/model.py``, hand-written): the checks import
it and call ``execute``. The config.yaml files are hand-written too; the checks validate them
and compare their inputs and outputs with each model's graph.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

MODELS = Path(__file__).resolve().parent / "models"

# onnx.helper models: an opset and IR version that onnxruntime 1.16+ accepts.
OPSET = 17
IR_VERSION = 8
PRODUCER = "modelserve examples/build_models.py"

# digits
DIGITS_SEED = 0
DIGITS_TEST_SIZE = 0.25  # held out to report an honest accuracy

# mlp
MLP_SEED = 1
MLP_LAYERS = (256, 512, 512, 10)

# torch_linear
TORCH_SEED = 2

# recommender: 1000x32 users + 2000x32 items as FP32 = 384 KB per version
RECO_SEED = 3
RECO_USERS = 1000
RECO_ITEMS = 2000
RECO_DIM = 32
RECO_TOP_K = 10
RECO_V2_NOISE = 0.5  # version 2's item embeddings = version 1's + this much noise, renormalised

# storyteller: a GPT-2 trained on a short text written for this repository
STORY_TEXT = MODELS.parent / "text" / "harbor_stories.txt"
STORY_SEED = 4
STORY_VOCAB = 512
STORY = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128}
STORY_STEPS = 700
STORY_WINDOW = 64
STORY_BATCH = 16


# --- builders -------------------------------------------------------------------------------


def _digits_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SEED, stratify=y)


def _rename_io(model, renames: dict[str, str]) -> None:
    """Renames graph inputs/outputs (and every node reference to them) in place."""
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        if value.name in renames:
            value.name = renames[value.name]
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def build_digits() -> None:
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = _digits_data()
    clf = LogisticRegression(max_iter=2000)
    clf.fit(x_train, y_train)

    model = convert_sklearn(
        clf,
        name="digits",
        initial_types=[("INPUT0", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},  # probabilities as a plain [N, 10] tensor
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        doc_string="LogisticRegression on scikit-learn's load_digits, pixels scaled to [0, 1]",
    )
    outputs = {o.name for o in model.graph.output}
    assert outputs == {"label", "probabilities"}, outputs
    # LABEL: skl2onnx gives [N]; reshape to [N, 1] so each request item gets a tensor of shape [1].
    _rename_io(model, {"label": "label_flat", "probabilities": "PROBABILITIES"})
    graph = model.graph
    graph.initializer.append(helper.make_tensor("label_shape", TensorProto.INT64, [2], [-1, 1]))
    graph.node.append(helper.make_node("Reshape", ["label_flat", "label_shape"], ["LABEL"], name="label_reshape"))
    for i, out in enumerate(graph.output):
        if out.name == "label_flat":
            graph.output.remove(out)
            graph.output.insert(i, helper.make_tensor_value_info("LABEL", TensorProto.INT64, ["N", 1]))
            break
    _set_batch_dim(model, "N")
    onnx.checker.check_model(model, full_check=True)

    # The converted model must agree with scikit-learn.
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    label, proba = sess.run(["LABEL", "PROBABILITIES"], {"INPUT0": x_test})
    np.testing.assert_array_equal(label[:, 0], clf.predict(x_test))
    np.testing.assert_allclose(proba, clf.predict_proba(x_test), atol=1e-4)
    _save_onnx(model, MODELS / "digits" / "1" / "model.onnx")


def _set_batch_dim(model, name: str) -> None:
    """Gives every graph input's and output's first dimension the same symbolic name."""
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = name


def _make_model(graph, doc: str):
    from onnx import helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    return model


def _save_onnx(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def build_mlp() -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(MLP_SEED)
    nodes, inits = [], []
    prev = "INPUT0"
    last = len(MLP_LAYERS) - 2
    for i, (fan_in, fan_out) in enumerate(zip(MLP_LAYERS[:-1], MLP_LAYERS[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)  # He init
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        out = "OUTPUT0" if i == last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out], name=f"add{i}"))
        if i != last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", MLP_LAYERS[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", MLP_LAYERS[-1]])],
        inits,
    )
    doc = f"MLP {'-'.join(map(str, MLP_LAYERS))}, ReLU, random He-initialised weights (seed {MLP_SEED})"
    _save_onnx(_make_model(graph, doc), MODELS / "mlp" / "1" / "model.onnx")


def _torch_module():
    import torch

    class TorchLinear(torch.nn.Module):
        """Linear(4, 3) followed by a softmax over the 3 outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.linear(x), dim=-1)

    torch.manual_seed(TORCH_SEED)
    return TorchLinear().eval()


def build_torch_linear() -> None:
    import torch

    scripted = torch.jit.script(_torch_module())
    path = MODELS / "torch_linear" / "1" / "model.pt"
    if path.exists() and _same_torchscript(torch.jit.load(str(path), map_location="cpu"), scripted):
        return  # torch.jit.save is not byte-reproducible (see _same_torchscript): keep the committed file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path))


def _same_torchscript(a, b) -> bool:
    """Same code and bit-identical weights. torch.jit.save writes a random ``.data/serialization_id``
    and this file's absolute path (in the debug info) into the archive, so two saves of the same
    module differ in bytes; this is the comparison that matters."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return (
        a.code == b.code
        and sa.keys() == sb.keys()
        and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    )


def _reco_embeddings(version: int) -> tuple[np.ndarray, np.ndarray]:
    """User and item embeddings of a version (both versions share the user embeddings)."""
    rng = np.random.default_rng(RECO_SEED)
    users = rng.standard_normal((RECO_USERS, RECO_DIM))
    items = rng.standard_normal((RECO_ITEMS, RECO_DIM))
    if version == 2:  # "re-trained": the same items, moved
        items = items + RECO_V2_NOISE * rng.standard_normal(items.shape)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    return users.astype(np.float32), items.astype(np.float32)


def build_recommender(version: int) -> None:
    from onnx import TensorProto, helper, numpy_helper

    users, items = _reco_embeddings(version)
    inits = [
        numpy_helper.from_array(users, "user_embeddings"),  # [users, dim]
        numpy_helper.from_array(np.ascontiguousarray(items.T), "item_embeddings_t"),  # [dim, items]
        numpy_helper.from_array(np.array([1], dtype=np.int64), "squeeze_axes"),
        numpy_helper.from_array(np.array([RECO_TOP_K], dtype=np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Squeeze", ["USER_ID", "squeeze_axes"], ["user_ids"], name="squeeze"),  # [N,1] -> [N]
        helper.make_node("Gather", ["user_embeddings", "user_ids"], ["user_vecs"], name="gather", axis=0),
        helper.make_node("MatMul", ["user_vecs", "item_embeddings_t"], ["all_scores"], name="score"),
        helper.make_node(
            "TopK", ["all_scores", "k"], ["SCORES", "ITEMS"], name="topk", axis=-1, largest=1, sorted=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "recommender",
        [helper.make_tensor_value_info("USER_ID", TensorProto.INT64, ["N", 1])],
        [
            helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["N", RECO_TOP_K]),
            helper.make_tensor_value_info("ITEMS", TensorProto.INT64, ["N", RECO_TOP_K]),
        ],
        inits,
    )
    doc = (
        f"recommender v{version}: {RECO_USERS} users x {RECO_ITEMS} items, {RECO_DIM}-dim embeddings; "
        f"top-{RECO_TOP_K} items by dot product (USER_ID in [0, {RECO_USERS}))"
    )
    model = _make_model(graph, doc)
    model.model_version = version
    _save_onnx(model, MODELS / "recommender" / str(version) / "model.onnx")


def _story_tokenizer(lines: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=STORY_VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def build_storyteller() -> None:
    """Trains the tokenizer, then the GPT-2 on every sentence (each followed by <|endoftext|>),
    and writes them in the layout the gpt2 backend reads (Hugging Face's tensor names)."""
    import json

    import torch
    from safetensors.torch import save_file

    lines = [line.strip() for line in STORY_TEXT.read_text().splitlines() if line.strip()]
    tok = _story_tokenizer(lines)
    eos = tok.token_to_id("<|endoftext|>")
    stream = []
    for line in lines:
        stream += tok.encode(line).ids + [eos]
    data = torch.tensor(stream)
    torch.manual_seed(STORY_SEED)
    c = STORY
    e, heads = c["n_embd"], c["n_head"]
    vocab = tok.get_vocab_size()

    def param(*shape, std=0.02):
        return torch.nn.Parameter(torch.randn(*shape) * std)

    w = {"wte.weight": param(vocab, e), "wpe.weight": param(c["n_positions"], e, std=0.01),
         "ln_f.weight": torch.nn.Parameter(torch.ones(e)), "ln_f.bias": torch.nn.Parameter(torch.zeros(e))}
    for i in range(c["n_layer"]):
        p = f"h.{i}."
        w.update({p + "ln_1.weight": torch.nn.Parameter(torch.ones(e)), p + "ln_1.bias": torch.nn.Parameter(torch.zeros(e)),
                  p + "attn.c_attn.weight": param(e, 3 * e), p + "attn.c_attn.bias": torch.nn.Parameter(torch.zeros(3 * e)),
                  p + "attn.c_proj.weight": param(e, e), p + "attn.c_proj.bias": torch.nn.Parameter(torch.zeros(e)),
                  p + "ln_2.weight": torch.nn.Parameter(torch.ones(e)), p + "ln_2.bias": torch.nn.Parameter(torch.zeros(e)),
                  p + "mlp.c_fc.weight": param(e, 4 * e), p + "mlp.c_fc.bias": torch.nn.Parameter(torch.zeros(4 * e)),
                  p + "mlp.c_proj.weight": param(4 * e, e), p + "mlp.c_proj.bias": torch.nn.Parameter(torch.zeros(e))})
    F = torch.nn.functional

    def forward(x):  # [B, T] -> logits [B, T, V]: the same arithmetic as modelserve.generation.gpt2
        b, t = x.shape
        h = w["wte.weight"][x] + w["wpe.weight"][torch.arange(t)]
        for i in range(c["n_layer"]):
            p = f"h.{i}."
            a = F.layer_norm(h, (e,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], 1e-5)
            q, k, v = (a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(e, dim=-1)
            q, k, v = (z.view(b, t, heads, e // heads).transpose(1, 2) for z in (q, k, v))
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, e)
            h = h + att @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            a = F.layer_norm(h, (e,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], 1e-5)
            h = h + F.gelu(a @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], approximate="tanh") @ \
                w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        h = F.layer_norm(h, (e,), w["ln_f.weight"], w["ln_f.bias"], 1e-5)
        return h @ w["wte.weight"].T

    torch.set_num_threads(2)
    opt = torch.optim.AdamW(w.values(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(STORY_SEED)
    for step in range(STORY_STEPS):
        starts = torch.randint(0, len(data) - STORY_WINDOW - 1, (STORY_BATCH,), generator=gen)
        x = torch.stack([data[s : s + STORY_WINDOW] for s in starts])
        y = torch.stack([data[s + 1 : s + STORY_WINDOW + 1] for s in starts])
        loss = F.cross_entropy(forward(x).reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = 3e-3 * (1 - step / STORY_STEPS) + 1e-4
    print(f"storyteller: final training loss {loss.item():.3f}")
    out = MODELS / "storyteller" / "1"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in w.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": vocab, **c,
                                                 "layer_norm_epsilon": 1e-5, "eos_token_id": eos}, indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))


def build_all() -> None:
    build_digits()
    build_mlp()
    build_torch_linear()
    build_recommender(1)
    build_recommender(2)
    build_storyteller()


# --- checks ---------------------------------------------------------------------------------

_ONNX_TO_DATATYPE = {1: "FP32", 7: "INT64"}  # TensorProto.FLOAT, TensorProto.INT64


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _load_config(name: str):
    try:
        from modelserve.config import load_config
    except ImportError as e:  # modelserve not installed: the model files can still be checked
        print(f"  (config.yaml not validated: {e})")
        return None
    return load_config(MODELS / name)


def _check_onnx_signature(name: str, path: Path) -> None:
    """The config's inputs/outputs match the graph: names, datatypes, shapes after a dynamic batch dim."""
    import onnx

    config = _load_config(name)
    if config is None:
        return
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    for kind, declared, actual in (
        ("input", config.inputs, [v for v in graph.input if v.name not in inits]),
        ("output", config.outputs, list(graph.output)),
    ):
        assert [t.name for t in declared] == [v.name for v in actual], (kind, declared, actual)
        for t, v in zip(declared, actual):
            dims = v.type.tensor_type.shape.dim
            assert dims[0].dim_param, f"{path}: {v.name}: batch dimension is not dynamic"
            shape = [d.dim_value if d.dim_value else -1 for d in dims[1:]]
            assert _ONNX_TO_DATATYPE[v.type.tensor_type.elem_type] == t.datatype, (v.name, t.datatype)
            assert shape == t.shape, (path, v.name, shape, t.shape)


def _report(path: Path) -> None:
    data = path.read_bytes()
    rel = path.relative_to(MODELS.parent)
    print(f"  {rel}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")


def check_add_sub() -> None:
    path = MODELS / "add_sub" / "1" / "model.py"
    config = _load_config("add_sub")
    spec = importlib.util.spec_from_file_location("examples_add_sub", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Model()
    model.load(SimpleNamespace(config=config, version_dir=path.parent, device="cpu"))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 16), dtype=np.float32)
    b = rng.standard_normal((3, 16), dtype=np.float32)
    out = model.execute({"INPUT0": a, "INPUT1": b})
    assert set(out) == {"OUTPUT0", "OUTPUT1"}, out.keys()
    for key, want in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
        assert out[key].shape == (3, 16) and out[key].dtype == np.float32, (key, out[key].shape, out[key].dtype)
        np.testing.assert_array_equal(out[key], want)
    if hasattr(model, "unload"):
        model.unload()
    print(f"  {path.relative_to(MODELS.parent)}: execute on a batch of 3 -> OUTPUT0, OUTPUT1 (3, 16) FP32, exact")


def check_digits() -> None:
    path = MODELS / "digits" / "1" / "model.onnx"
    _report(path)
    _check_onnx_signature("digits", path)
    x_train, x_test, y_train, y_test = _digits_data()
    sess = _session(path)
    label, proba = sess.run(["LABEL", "PROBABILITIES"], {"INPUT0": x_test[:3]})
    assert label.shape == (3, 1) and label.dtype == np.int64, (label.shape, label.dtype)
    assert proba.shape == (3, 10) and proba.dtype == np.float32, (proba.shape, proba.dtype)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = {}
    for split, x, y in (("train", x_train, y_train), ("held-out", x_test, y_test)):
        label, proba = sess.run(["LABEL", "PROBABILITIES"], {"INPUT0": x})
        np.testing.assert_array_equal(label[:, 0], proba.argmax(axis=1))
        accuracy[split] = float((label[:, 0] == y).mean())
        assert accuracy[split] > 0.9, (split, accuracy[split])
    print(
        f"  batch of 3: LABEL (3, 1) INT64, PROBABILITIES (3, 10) FP32; accuracy train "
        f"{accuracy['train']:.4f} ({len(y_train)} images), held-out {accuracy['held-out']:.4f} ({len(y_test)})"
    )


def check_mlp() -> None:
    path = MODELS / "mlp" / "1" / "model.onnx"
    _report(path)
    _check_onnx_signature("mlp", path)
    import onnx
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    sess = _session(path)
    x = np.random.default_rng(0).standard_normal((3, MLP_LAYERS[0]), dtype=np.float32)
    (y,) = sess.run(["OUTPUT0"], {"INPUT0": x})
    assert y.shape == (3, MLP_LAYERS[-1]) and y.dtype == np.float32, (y.shape, y.dtype)
    ref = x
    for i in range(len(MLP_LAYERS) - 1):
        ref = ref @ weights[f"w{i}"] + weights[f"b{i}"]
        if i != len(MLP_LAYERS) - 2:
            ref = np.maximum(ref, 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    for n in (1, 64):  # the batch dimension is dynamic
        assert sess.run(["OUTPUT0"], {"INPUT0": np.zeros((n, MLP_LAYERS[0]), np.float32)})[0].shape == (n, 10)
    print("  batch of 3: OUTPUT0 (3, 10) FP32, matches numpy; batches of 1 and 64 run")


def check_torch_linear() -> None:
    import torch

    path = MODELS / "torch_linear" / "1" / "model.pt"
    _report(path)
    config = _load_config("torch_linear")
    if config is not None:
        assert [t.as_spec() for t in config.inputs] == [("INPUT0", "FP32", [4])], config.inputs
        assert [t.as_spec() for t in config.outputs] == [("OUTPUT0", "FP32", [3])], config.outputs
    module = torch.jit.load(str(path), map_location="cpu").eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 4), dtype=np.float32))
    with torch.no_grad():
        y = module(x)
        ref = _torch_module()(x)  # the same seed rebuilds the same weights
    assert tuple(y.shape) == (3, 3) and y.dtype == torch.float32, (y.shape, y.dtype)
    torch.testing.assert_close(y.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(y, ref)
    assert _same_torchscript(module, torch.jit.script(_torch_module())), "model.pt differs from a fresh build"
    print("  batch of 3: OUTPUT0 (3, 3) FP32, rows sum to 1, matches the eager module; weights bit-identical to a rebuild")


def check_recommender() -> None:
    config = _load_config("recommender")
    if config is not None:
        assert config.version_policy.select([1, 2]) == [1, 2], config.version_policy
        assert config.labels == {"stable": 1}, config.labels
    ids = np.array([[0], [1], [RECO_USERS - 1]], dtype=np.int64)
    results = {}
    for version in (1, 2):
        path = MODELS / "recommender" / str(version) / "model.onnx"
        _report(path)
        _check_onnx_signature("recommender", path)
        sess = _session(path)
        scores, items = sess.run(["SCORES", "ITEMS"], {"USER_ID": ids})
        assert scores.shape == (3, RECO_TOP_K) and scores.dtype == np.float32, (scores.shape, scores.dtype)
        assert items.shape == (3, RECO_TOP_K) and items.dtype == np.int64, (items.shape, items.dtype)
        assert np.all(np.diff(scores, axis=1) <= 0), "scores not in descending order"
        users, item_emb = _reco_embeddings(version)
        ref = users[ids[:, 0]] @ item_emb.T
        np.testing.assert_allclose(scores, np.take_along_axis(ref, items, axis=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores, -np.sort(-ref, axis=1)[:, :RECO_TOP_K], rtol=1e-5, atol=1e-5)
        all_ids = np.arange(RECO_USERS, dtype=np.int64)[:, None]
        results[version] = sess.run(["ITEMS"], {"USER_ID": all_ids})[0]
    differ = float(np.mean([set(a) != set(b) for a, b in zip(results[1], results[2])]))
    overlap = float(np.mean([len(set(a) & set(b)) for a, b in zip(results[1], results[2])]))
    assert differ > 0.5, differ
    print(
        f"  batch of 3: SCORES (3, {RECO_TOP_K}) FP32 descending, ITEMS (3, {RECO_TOP_K}) INT64, match numpy; "
        f"v1 vs v2: top-{RECO_TOP_K} differs for {differ:.0%} of users (mean overlap {overlap:.1f} items)"
    )


def story_recall() -> float:
    """The share of the example text the storyteller gives back: for every sentence, the greedy
    continuation of its first half (whole words) against its second half, word by word."""
    from modelserve.generation import GenerationEngine, SamplingParams

    lines = [line.strip() for line in STORY_TEXT.read_text().splitlines() if line.strip()]
    right = total = 0
    with GenerationEngine(MODELS / "storyteller" / "1", max_num_seqs=8) as engine:
        requests = []
        for line in lines:
            words = line.split(" ")
            half = len(words) // 2
            requests.append((words[half:], engine.submit(" ".join(words[:half]),
                                                          SamplingParams(max_tokens=40, temperature=0))))
        for rest, request in requests:
            got = request.result().text.strip().split(" ")
            right += sum(1 for a, b in zip(rest, got) if a == b)
            total += len(rest)
    return right / total


def check_storyteller() -> None:
    recall = story_recall()
    print(f"  greedy continuations give back {recall:.0%} of the second halves' words")
    assert recall >= 0.8, recall
    _report(MODELS / "storyteller" / "1" / "model.safetensors")


def check_all() -> None:
    for name, check in (
        ("add_sub", check_add_sub),
        ("digits", check_digits),
        ("mlp", check_mlp),
        ("torch_linear", check_torch_linear),
        ("recommender", check_recommender),
        ("storyteller", check_storyteller),
    ):
        print(f"{name}:")
        check()
    print("all example models OK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only verify the existing files; build nothing")
    args = parser.parse_args(argv)
    if not args.check:
        build_all()
        print(f"built the model files under {MODELS}")
    check_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
