"""The generation engine (issue 16): the native scheduler and KV blocks against Python reference
models (Hypothesis), and the continuous, paged GPT-2 path against transformers' GPT2LMHeadModel run
one sequence at a time on the same weights."""

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve._native import core

gen = core.gen


# --- KV blocks against a reference -----------------------------------------------------------------

class RefBlocks:
    """What Note [KV blocks] says, in plain Python."""

    def __init__(self, n, bs):
        self.bs, self.refs, self.free = bs, [0] * n, list(range(n - 1, -1, -1))
        self.lru, self.by_hash, self.hash_of, self.tokens_of = [], {}, {}, {}

    def allocate(self):
        if self.free:
            b = self.free.pop()
        elif self.lru:
            b = self.lru.pop(0)
            del self.by_hash[self.hash_of.pop(b)]
            self.tokens_of.pop(b)
        else:
            return None
        self.refs[b] = 1
        return b

    def retain(self, b):
        if self.refs[b] == 0 and b in self.lru:
            self.lru.remove(b)
        self.refs[b] += 1

    def release(self, b):
        self.refs[b] -= 1
        if self.refs[b] == 0:
            (self.lru if b in self.hash_of else self.free).append(b)

    def lookup(self, h, tokens):
        b = self.by_hash.get(h)
        if b is None or self.tokens_of[b] != list(tokens):
            return None
        self.retain(b)
        return b

    def publish(self, b, h, tokens):
        if b in self.hash_of or h in self.by_hash:
            return
        self.by_hash[h], self.hash_of[b], self.tokens_of[b] = b, h, list(tokens)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "release", "publish", "lookup"]), st.integers(0, 7),
                          st.integers(0, 2)), max_size=80))
def test_kv_blocks_match_the_reference(ops):
    bs = 2
    native, ref = gen.KvBlocks(6, bs), RefBlocks(6, bs)
    held = []  # blocks we hold a reference to
    for op, pick, content in ops:
        tokens = np.array([content, content + 1], np.int32)
        h = gen.block_hash(0, tokens)
        if op == "alloc":
            a, b = native.allocate(), ref.allocate()
            assert a == b
            if a is not None:
                held.append(a)
        elif op == "release" and held:
            b = held.pop(pick % len(held))
            native.release(b)
            ref.release(b)
        elif op == "publish" and held:
            b = held[pick % len(held)]
            native.publish(b, h, tokens)
            ref.publish(b, h, tokens)
        elif op == "lookup":
            a, b = native.lookup(h, tokens), ref.lookup(h, tokens)
            assert a == b
            if a is not None:
                held.append(a)
        s = native.stats()
        assert s["free"] == len(ref.free) and s["cached"] == len(ref.lru)
        assert s["in_use"] == sum(1 for r in ref.refs if r > 0)
    for b in held:
        native.release(b)
    assert native.stats()["in_use"] == 0


def test_block_hash_chains_prefixes():
    a = gen.block_hash(0, np.array([1, 2], np.int32))
    assert gen.block_hash(a, np.array([3, 4], np.int32)) != gen.block_hash(0, np.array([3, 4], np.int32))
    assert a == gen.block_hash(0, np.array([1, 2], np.int32))


# --- the scheduler's invariants ------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 12), st.integers(0, 3)), min_size=1, max_size=12),
       st.integers(8, 40), st.integers(1, 5), st.integers(4, 32), st.booleans(), st.integers(0, 2 ** 31))
def test_the_scheduler_keeps_its_budgets_and_frees_every_block(requests, num_blocks, max_seqs, budget, caching, seed):
    rng = np.random.default_rng(seed)
    bs, max_len = 4, 32
    s = gen.Scheduler(block_size=bs, num_blocks=num_blocks, max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                      max_model_len=max_len, prefix_caching=caching)
    want = {}
    for i, (prompt_len, out_len, _) in enumerate(requests):
        prompt_len = min(prompt_len, max_len - out_len)
        if prompt_len < 1:
            continue
        prompt = rng.integers(0, 3, prompt_len).astype(np.int32)  # a small alphabet: shared prefixes
        s.add(i, prompt)
        want[i] = (prompt_len, out_len, [])
    aborted = set()
    for _ in range(2000):
        if not s.has_work():
            break
        step = s.schedule()
        assert len(step["ids"]) <= max_seqs and int(step["counts"].sum()) <= budget
        assert len(set(step["slots"].tolist())) == len(step["slots"])  # no two tokens share a slot
        assert step["expired"] == []
        finished = []
        sampled = []
        for rid, start, count, sample in zip(step["ids"], step["starts"], step["counts"], step["sample"]):
            rid = int(rid)
            prompt_len, out_len, out = want[rid]
            assert start + count <= prompt_len + len(out)
            if sample:
                sampled.append(7)
                if len(out) + 1 >= out_len:
                    finished.append(rid)
                out.append(7)
        if requests[0][2] == 3 and step["ids"].size and not aborted:
            victim = int(step["ids"][0])  # aborted while its step runs
            s.abort(victim)
            aborted.add(victim)
        s.complete(sampled, finished)
    assert not s.has_work()
    for rid, (_, out_len, out) in want.items():
        assert rid in aborted or len(out) == out_len
    st_ = s.stats()
    assert st_["blocks"]["in_use"] == 0 and st_["running"] == 0 and st_["waiting"] == 0


def test_a_request_too_long_or_empty_is_refused_with_the_numbers():
    s = gen.Scheduler(block_size=4, num_blocks=8, max_model_len=16)
    with pytest.raises(Exception, match="the prompt has 16 tokens; generation.max_model_len is 16"):
        s.add(1, np.zeros(16, np.int32))
    with pytest.raises(Exception, match="at least one prompt token"):
        s.add(2, np.zeros(0, np.int32))
    with pytest.raises(Exception, match="cannot hold one sequence of generation.max_model_len 64"):
        gen.Scheduler(block_size=4, num_blocks=8, max_model_len=64)


def test_waiting_requests_past_their_deadline_expire():
    s = gen.Scheduler(block_size=4, num_blocks=4, max_num_seqs=1, max_model_len=16)
    s.add(1, np.ones(3, np.int32))
    s.add(2, np.ones(3, np.int32), timeout_s=0.01)
    time.sleep(0.05)
    step = s.schedule()
    assert step["ids"].tolist() == [1] and step["expired"] == [2]


# --- GPT-2 against transformers -------------------------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from modelserve.generation import GenerationEngine, SamplingParams  # noqa: E402

VOCAB = 96


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny randomly initialised GPT-2 (no download), saved as config.json + model.safetensors."""
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=1)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    reference = model.double().eval()
    return folder, reference


def greedy_reference(model, prompt, n):
    """The transformers model, one sequence at a time, greedy, no end-of-sequence stop."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def prompts(seed, count, lo=3, hi=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, rng.integers(lo, hi)).tolist() for _ in range(count)]


def run_all(engine, items, stagger_s=0.0):
    requests = []
    for prompt, n in items:
        requests.append(engine.submit(prompt, SamplingParams(max_tokens=n, ignore_eos=True)))
        time.sleep(stagger_s)
    return [r.result().token_ids for r in requests]


def test_continuous_paged_greedy_equals_transformers_under_staggered_arrivals(checkpoint):
    folder, reference = checkpoint
    items = [(p, n) for p, n in zip(prompts(1, 8), [5, 17, 9, 30, 2, 12, 21, 8])]
    with GenerationEngine(folder, dtype="float64", max_num_seqs=4, max_num_batched_tokens=24) as engine:
        got = run_all(engine, items, stagger_s=0.003)
        assert engine.stats()["blocks"]["in_use"] == 0
    for (prompt, n), tokens in zip(items, got):
        assert tokens == greedy_reference(reference, prompt, n)


def test_preemption_recomputes_and_changes_no_token(checkpoint):
    folder, reference = checkpoint
    items = [(p, 40) for p in prompts(2, 6, 20, 40)]
    # 20 blocks of 4: one sequence of max_model_len 80 fits, six growing ones do not.
    with GenerationEngine(folder, dtype="float64", block_size=4, num_blocks=20, max_model_len=80,
                          max_num_seqs=6) as engine:
        got = run_all(engine, items)
        stats = engine.stats()
    assert stats["preemptions"] > 0
    assert stats["blocks"]["in_use"] == 0
    for (prompt, n), tokens in zip(items, got):
        assert tokens == greedy_reference(reference, prompt, n)


def test_shared_prefixes_are_computed_once_and_change_no_token(checkpoint):
    folder, reference = checkpoint
    prefix = prompts(3, 1, 48, 49)[0]
    items = [(prefix + tail, 6) for tail in prompts(4, 5, 2, 9)]
    with GenerationEngine(folder, dtype="float64", block_size=16) as engine:
        first = run_all(engine, items[:1])
        rest = run_all(engine, items[1:])
        stats = engine.stats()
    assert stats["prefix_cached_tokens"] == 4 * 48  # every later request found the 3 prefix blocks
    for (prompt, n), tokens in zip(items, first + rest):
        assert tokens == greedy_reference(reference, prompt, n)


def test_float32_logits_match_within_tolerance(checkpoint):
    folder, reference = checkpoint
    prompt = prompts(5, 1, 30, 31)[0]
    with GenerationEngine(folder, dtype="float32") as engine:
        out = engine.generate(prompt, SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True))
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(reference(ids).logits[0].double(), -1)
    expected = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(out.token_ids)]
    np.testing.assert_allclose(out.logprobs, expected, atol=1e-4)


def test_a_seed_gives_the_same_tokens_whatever_else_is_in_the_batch(checkpoint):
    folder, _ = checkpoint
    prompt = prompts(6, 1)[0]
    params = SamplingParams(max_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=42, ignore_eos=True)
    with GenerationEngine(folder) as engine:
        alone = engine.generate(prompt, params).token_ids
        others = [engine.submit(p, SamplingParams(max_tokens=20, temperature=1.0, ignore_eos=True))
                  for p in prompts(7, 5)]
        crowded = engine.generate(prompt, params).token_ids
        for o in others:
            o.result()
        other_seed = engine.generate(prompt, SamplingParams(**{**params.__dict__, "seed": 7})).token_ids
    assert alone == crowded
    assert other_seed != alone


def test_cancelling_a_stream_frees_its_blocks(checkpoint):
    folder, _ = checkpoint
    with GenerationEngine(folder, max_num_seqs=2) as engine:
        stream = engine.stream(prompts(8, 1)[0], SamplingParams(max_tokens=200, ignore_eos=True))
        got = [next(stream) for _ in range(3)]
        assert engine.stats()["blocks"]["in_use"] > 0
        stream.close()  # the caller stops iterating
        deadline = time.monotonic() + 10
        while engine.stats()["blocks"]["in_use"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats()["blocks"]["in_use"] == 0
        assert all(len(d.token_ids) == 1 for d in got)
        # The engine goes on serving.
        assert len(engine.generate([5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True)).token_ids) == 3


def test_stop_tokens_eos_and_min_tokens(checkpoint):
    folder, reference = checkpoint
    prompt = prompts(9, 1)[0]
    expected = greedy_reference(reference, prompt, 10)
    with GenerationEngine(folder, dtype="float64") as engine:
        stop = expected[3]
        out = engine.generate(prompt, SamplingParams(max_tokens=10, stop_token_ids=[stop], ignore_eos=True))
        first = expected.index(stop)
        assert out.token_ids == expected[: first + 1] and out.finish_reason == "stop"
        out = engine.generate(prompt, SamplingParams(max_tokens=10, stop_token_ids=[stop], min_tokens=first + 2,
                                                     ignore_eos=True))
        assert len(out.token_ids) > first + 1
        out = engine.generate(prompt, SamplingParams(max_tokens=10, ignore_eos=True))
        assert out.finish_reason == "length" and out.token_ids == expected


def test_bad_sampling_parameters_name_the_parameter(checkpoint):
    folder, _ = checkpoint
    with GenerationEngine(folder, max_model_len=64) as engine:
        for params, text in [(SamplingParams(max_tokens=0), "'max_tokens' must be an integer >= 1, got 0"),
                             (SamplingParams(top_p=0), "'top_p' must be in (0, 1], got 0"),
                             (SamplingParams(temperature=-1), "'temperature' must be >= 0, got -1"),
                             (SamplingParams(stop_token_ids=[VOCAB]), f"token ids in [0, {VOCAB}), got {VOCAB}")]:
            with pytest.raises(Exception, match=__import__("re").escape(text)):
                engine.generate([3, 4], params)
        with pytest.raises(Exception, match="prompt of 60 tokens \\+ max_tokens 10 exceeds generation.max_model_len 64"):
            engine.generate([3] * 60, SamplingParams(max_tokens=10))
        with pytest.raises(Exception, match="prompt token 500 is outside the vocabulary"):
            engine.generate([500], SamplingParams())


# --- through the repository: backend gpt2, the generation key, Runtime.generate/stream ----------

def make_repository(root, checkpoint_folder, generation="{max_num_seqs: 4, dtype: float64}", tokenizer=True):
    import shutil

    version = root / "tiny" / "1"
    version.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint_folder / name, version / name)
    if tokenizer:  # a word-level tokenizer over the model's vocabulary: token i is the word "wi"
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
        tok.save(str(version / "tokenizer.json"))
    (root / "tiny" / "config.yaml").write_text(f"generation: {generation}\n")
    return root


def test_runtime_generates_and_streams_text_with_stop_strings(tmp_path, checkpoint):
    import modelserve

    folder, reference = checkpoint
    make_repository(tmp_path, folder)
    prompt = prompts(10, 1)[0]
    expected = greedy_reference(reference, prompt, 12)
    text = " ".join(f"w{t}" for t in prompt)
    with modelserve.Runtime(tmp_path) as rt:
        assert rt.model_versions("tiny")["versions"][1]["backend"] == "gpt2"
        out = rt.generate("tiny", text, SamplingParams(max_tokens=12, ignore_eos=True))
        assert out.token_ids == expected and out.prompt_ids == prompt
        assert out.text == " ".join(f"w{t}" for t in expected)
        # A stop string spanning two tokens is cut from the text, and ends the request.
        stop = f"w{expected[4]} w{expected[5]}"
        out = rt.generate("tiny", text, SamplingParams(max_tokens=12, ignore_eos=True, stop=[stop]))
        full = " ".join(f"w{t}" for t in expected)
        assert out.finish_reason == "stop" and out.text == full[: full.find(stop)]
        # Streaming gives the same tokens, one delta per iteration, the stop string held back.
        deltas = list(rt.stream("tiny", text, SamplingParams(max_tokens=12, ignore_eos=True, stop=[stop])))
        assert deltas[-1].finish_reason == "stop"
        assert "".join(d.text for d in deltas) == full[: full.find(stop)]
        assert sum(len(d.token_ids) for d in deltas) == len(out.token_ids)
        with pytest.raises(modelserve.InvalidArgumentError, match="is generative"):
            rt.infer("tiny", {"x": np.ones(1, np.float32)})


def test_generation_config_is_validated(tmp_path, checkpoint):
    from modelserve.config import ModelConfig

    with pytest.raises(Exception, match="give num_blocks or kv_cache_bytes, not both"):
        ModelConfig.model_validate({"generation": {"num_blocks": 4, "kv_cache_bytes": 1024}})
    with pytest.raises(Exception, match="block_size"):
        ModelConfig.model_validate({"generation": {"block_size": 0}})


@pytest.mark.gpu
def test_the_engine_on_a_gpu_gives_the_cpu_tokens(checkpoint):
    folder, _ = checkpoint
    items = [(p, 10) for p in prompts(11, 4)]
    with GenerationEngine(folder, dtype="float64") as cpu:
        expected = run_all(cpu, items)
    with GenerationEngine(folder, dtype="float64", device="cuda:0") as gpu:
        assert gpu.kv.device.type == "cuda"
        assert run_all(gpu, items) == expected


def test_garbage_in_unused_kv_slots_never_reaches_an_answer(checkpoint):
    """Pooled memory is uninitialised: fill a cache's pool block with NaN first, release it, and
    the engine that reuses it must still answer exactly (its padding is read with weight 0)."""
    import gc

    folder, reference = checkpoint

    def poison():
        with GenerationEngine(folder, dtype="float64", max_num_seqs=4) as first:
            first.kv.fill_(float("nan"))
            return first.kv.data_ptr()

    address = poison()
    gc.collect()  # the engine and its view are gone: the block is back in the pool
    items = [(p, 6) for p in prompts(12, 4)]
    with GenerationEngine(folder, dtype="float64", max_num_seqs=4) as engine:
        assert engine.kv.data_ptr() == address  # the same pooled block
        got = run_all(engine, items)
    for (prompt, n), tokens in zip(items, got):
        assert tokens == greedy_reference(reference, prompt, n)


def test_priority_levels_go_first_and_arrival_orders_each_level():
    s = gen.Scheduler(block_size=4, num_blocks=16, max_num_seqs=1, max_model_len=16)
    s.add(1, np.ones(3, np.int32), priority=2)
    s.add(2, np.ones(3, np.int32), priority=0)
    s.add(3, np.ones(3, np.int32), priority=2)
    s.add(4, np.ones(3, np.int32), priority=0)
    order = []
    while s.has_work():
        step = s.schedule()
        rid = int(step["ids"][0])
        order.append(rid)
        s.complete([5], [rid])  # one token and done
    assert order == [2, 4, 1, 3]


def test_a_failing_iteration_fails_its_requests_and_the_engine_goes_on(checkpoint, monkeypatch):
    import modelserve

    folder, reference = checkpoint
    with GenerationEngine(folder, dtype="float64") as engine:
        real = engine._stop_reason
        calls = {"n": 0}

        def broken(live, token):  # a bug outside the model, after sampling, mid-iteration
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("boom")
            return real(live, token)

        monkeypatch.setattr(engine, "_stop_reason", broken)
        with pytest.raises(modelserve.InternalError, match="the generation loop failed: RuntimeError: boom"):
            engine.generate([3, 4, 5], SamplingParams(max_tokens=8, ignore_eos=True))
        monkeypatch.setattr(engine, "_stop_reason", real)
        prompt = prompts(13, 1)[0]
        assert engine.generate(prompt, SamplingParams(max_tokens=5, ignore_eos=True)).token_ids == \
            greedy_reference(reference, prompt, 5)
        assert engine.stats()["blocks"]["in_use"] == 0
