"""The OpenAI-compatible routes (modelserve/server/openai_http.py) driven by the real ``openai``
client against a real server on a real socket, on a small GPT-2 with random weights and a
word-level tokenizer (token i is the word "wi")."""

import json
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from conftest import LoopThread  # noqa: E402
from modelserve.generation import GenerationEngine, SamplingParams  # noqa: E402
from modelserve.generation.gpt2 import write_random_checkpoint  # noqa: E402

VOCAB = 96
TOKEN = "s3cret"


def write_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from modelserve.server.app import Server
    from modelserve.server.common import ServerOptions

    repo = tmp_path_factory.mktemp("repo")
    version = repo / "tiny" / "1"
    write_random_checkpoint(version, vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, seed=3)
    write_tokenizer(version)
    (repo / "tiny" / "config.yaml").write_text("generation: {max_num_seqs: 8, block_size: 4}\n")
    (repo / "plain" / "1").mkdir(parents=True)
    (repo / "plain" / "1" / "model.py").write_text("class Model:\n    def execute(self, inputs):\n        return inputs\n")
    loop = LoopThread("openai-test")
    server = Server(repo, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0, inference_token=TOKEN))
    loop.run(server.start())
    reference = GenerationEngine(version)  # the same weights in this process
    yield server, reference
    reference.close()
    loop.run(server.shutdown())
    loop.close()


@pytest.fixture
def client(served):
    server, _ = served
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=TOKEN, max_retries=0)
    yield c
    c.close()


def words(ids):
    return " ".join(f"w{i}" for i in ids)


def expected(reference, prompt, n, **kw):
    return reference.generate(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **kw))


def test_models_lists_generative_models_only(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_completion_equals_the_engine_in_process(client, served):
    _, reference = served
    want = expected(reference, "w5 w6 w7 w8", 10)
    got = client.completions.create(model="tiny", prompt="w5 w6 w7 w8", max_tokens=10, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == 4 and got.usage.completion_tokens == 10 and got.usage.total_tokens == 14
    assert got.model == "tiny" and got.object == "text_completion"
    # The same by version number.
    again = client.completions.create(model="tiny:1", prompt="w5 w6 w7 w8", max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert again.choices[0].text == want.text


def test_streamed_completion_with_usage(client, served):
    _, reference = served
    want = expected(reference, "w9 w10", 12)
    chunks = list(client.completions.create(model="tiny", prompt="w9 w10", max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == 2


def test_chat_completion_streamed_and_not(client, served):
    _, reference = served
    messages = [{"role": "system", "content": "w1 w2"}, {"role": "user", "content": "w3 w4 w5"}]
    prompt = reference.apply_chat_template(messages)
    assert prompt == "system: w1 w2\nuser: w3 w4 w5\nassistant:"
    want = expected(reference, prompt, 8)
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                         extra_body={"ignore_eos": True}, logprobs=True)
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want.text
    assert len(got.choices[0].logprobs.content) == 8
    assert all(entry.logprob <= 0 for entry in got.choices[0].logprobs.content)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == want.text


def test_stop_strings_and_seeds(client, served):
    _, reference = served
    want = expected(reference, "w11 w12", 12)
    stop = " ".join(want.text.split(" ")[3:5])
    got = client.completions.create(model="tiny", prompt="w11 w12", max_tokens=12, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert got.choices[0].finish_reason == "stop"
    assert got.choices[0].text == want.text[: want.text.find(stop)]
    a = client.completions.create(model="tiny", prompt="w11 w12", max_tokens=12, temperature=1.0, seed=5,
                                  extra_body={"ignore_eos": True})
    b = client.completions.create(model="tiny", prompt="w11 w12", max_tokens=12, temperature=1.0, seed=5,
                                  extra_body={"ignore_eos": True})
    assert a.choices[0].text == b.choices[0].text


@pytest.mark.parametrize("kwargs, param, text", [
    ({"n": 2}, "n", "'n' is not supported"),
    ({"max_tokens": 0}, "max_tokens", "'max_tokens' must be an integer > 0, got 0"),
    ({"top_p": 1.5}, "top_p", "'top_p' must be in (0, 1], got 1.5"),
    ({"max_tokens": 500}, "max_tokens", "exceed the model's context of 128 tokens"),
    ({"logit_bias": {"5": 10}}, "logit_bias", "'logit_bias' is not supported"),
])
def test_bad_requests_are_400_naming_the_field(client, kwargs, param, text):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="w1 w2", **kwargs)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param and text in e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"


def test_unknown_models_non_generative_ones_and_long_prompts(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="w1")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="is not a generative model"):
        client.completions.create(model="plain", prompt="w1")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=words(range(130)))
    assert e.value.body["code"] == "context_length_exceeded"
    assert "the prompt has 130 tokens; the model's context is 128 tokens" in e.value.body["message"]


def test_the_inference_token_is_the_bearer_token(served):
    server, _ = served
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        bad.models.list()
    assert "bearer token" in e.value.body["message"]
    bad.close()


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(served):
    server, _ = served
    engine = server.runtime.repository.get("tiny").versions[1].generator
    url = f"http://127.0.0.1:{server.http_port}/v1/completions"
    body = {"model": "tiny", "prompt": "w1 w2 w3", "max_tokens": 120, "stream": True, "ignore_eos": True}
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        with http.stream("POST", url, json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert engine.stats()["blocks"]["in_use"] > 0
        # The response closed: the server sees the disconnect and cancels the sequence.
    deadline = time.monotonic() + 10
    while engine.stats()["blocks"]["in_use"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats()["blocks"]["in_use"] == 0 and engine.stats()["running"] == 0


def test_generation_metrics_are_exported(client, served):
    server, _ = served
    client.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=5, extra_body={"ignore_eos": True})
    text = server.metrics.render()[0].decode()
    for series in ('modelserve_time_to_first_token_seconds_count{model="tiny",version="1"}',
                   'modelserve_inter_token_latency_seconds_bucket{le="0.001",model="tiny",version="1"}',
                   'modelserve_prompt_tokens_total{model="tiny",version="1"}',
                   'modelserve_generated_tokens_total{model="tiny",version="1"}',
                   'modelserve_sequences{model="tiny",state="running",version="1"}',
                   'modelserve_kv_cache_blocks{model="tiny",state="used",version="1"}',
                   'modelserve_preemptions_total{model="tiny",version="1"} 0.0',
                   'modelserve_prefix_cache_hit_ratio{model="tiny",version="1"}'):
        assert series in text, series
    generated = float(text.split('modelserve_generated_tokens_total{model="tiny",version="1"} ')[1].split()[0])
    assert generated >= 5


def test_tritons_generate_extension(served):
    server, reference = served
    want = expected(reference, "w20 w21", 6)
    base = f"http://127.0.0.1:{server.http_port}/v2/models/tiny"
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        r = http.post(base + "/generate", json={"text_input": "w20 w21", "max_tokens": 6, "temperature": 0,
                                                 "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json() == {"model_name": "tiny", "model_version": "1", "text_output": want.text}
        r = http.post(base + "/versions/1/generate_stream",
                      json={"text_input": "w20 w21", "parameters": {"max_tokens": 6, "temperature": 0, "ignore_eos": True}})
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        assert "".join(e["text_output"] for e in events) == want.text
        r = http.post(base + "/generate", json={"text_input": "w20", "max_tokens": -1})
        assert r.status_code == 400 and "'max_tokens' must be an integer > 0, got -1" in r.json()["error"]
        r = http.post(base + "/generate", json={"max_tokens": 2})
        assert r.status_code == 400 and "'text_input' must be a non-empty string" in r.json()["error"]


def test_infer_on_a_generative_model_says_where_to_go(served):
    server, _ = served
    url = f"http://127.0.0.1:{server.http_port}/v2/models/tiny/infer"
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["w1"]}]}
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400
    assert "model 'tiny' version 1 is generative" in r.json()["error"] and "/v1/completions" in r.json()["error"]


def test_grpc_generation_whole_and_streamed(served):
    """Triton's convention over gRPC: ModelInfer answers the whole completion; ModelStreamInfer one
    response per chunk, triton_final_response false until the last; the config says decoupled."""
    import queue

    import numpy
    grpcclient = pytest.importorskip("tritonclient.grpc")

    server, reference = served
    want = expected(reference, "w30 w31", 9)
    headers = {"authorization": f"Bearer {TOKEN}"}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    config = client.get_model_config("tiny", headers=headers).config
    assert config.model_transaction_policy.decoupled
    assert [i.name for i in config.input] == ["text_input"] and [o.name for o in config.output] == ["text_output"]
    x = grpcclient.InferInput("text_input", [1], "BYTES")
    x.set_data_from_numpy(numpy.array([b"w30 w31"], dtype=object))
    params = {"max_tokens": 9, "temperature": 0.0, "ignore_eos": True}
    whole = client.infer("tiny", [x], parameters=params, headers=headers)
    assert whole.as_numpy("text_output")[0].decode() == want.text
    got: "queue.Queue" = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)), headers=headers)
    client.async_stream_infer("tiny", [x], parameters=params, request_id="r1", enable_empty_final_response=True)
    chunks, finals = [], []
    while True:
        result, error = got.get(timeout=30)
        assert error is None, error
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        finals.append(final)
        chunks.append(result.as_numpy("text_output")[0].decode())
        if final:
            break
    client.stop_stream()
    assert "".join(chunks) == want.text
    assert len(finals) > 1 and finals[-1] and not any(finals[:-1])
    bad = grpcclient.InferInput("text_input", [1], "BYTES")
    bad.set_data_from_numpy(numpy.array([b"w1"], dtype=object))
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        client.infer("tiny", [bad], parameters={"max_tokens": 0}, headers=headers)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "'max_tokens' must be an integer > 0" in e.value.message()
    client.close()


def test_a_traffic_split_routes_generations_by_user_and_judges_time_to_first_token(tmp_path):
    """Note [Routed generations] (runtime.py): a split over two versions, sticky on the OpenAI
    ``user``; each target's latency is its time to the first token."""
    from modelserve.server.app import Server
    from modelserve.server.common import ServerOptions

    for version, seed in ((1, 3), (2, 4)):
        folder = tmp_path / "tiny" / str(version)
        write_random_checkpoint(folder, vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, seed=seed)
        write_tokenizer(folder)
    (tmp_path / "tiny" / "config.yaml").write_text("generation: {max_num_seqs: 8, block_size: 4}\n"
                                                  "version_policy: {all: true}\nlabels: {stable: 2}\n")
    loop = LoopThread("openai-split")
    server = Server(tmp_path, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0))
    loop.run(server.start())
    try:
        rt = server.runtime
        rt.traffic.set_policy("tiny", {"targets": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
                                       "sticky_key": "user"})
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="none", max_retries=0)
        texts = {}
        for user in [f"u{i}" for i in range(12)]:
            # The two versions' random weights answer alike; their log-probabilities tell them apart.
            outs = {tuple(round(x, 6) for x in c.completions.create(
                model="tiny", prompt="w40 w41", max_tokens=4, temperature=0, user=user, logprobs=0,
                extra_body={"ignore_eos": True}).choices[0].logprobs.token_logprobs) for _ in range(2)}
            assert len(outs) == 1  # sticky: a user always meets the same version
            texts[user] = outs.pop()
        assert len(set(texts.values())) == 2  # both versions served someone
        rows = {r["target"]: r for r in rt.traffic.readout("tiny")["targets"]}
        assert sum(r["requests"] for r in rows.values()) == 24
        assert all(r["requests"] > 0 and r["errors"] == 0 for r in rows.values())

        # Labels and numbers select a version past the policy.
        def logprobs(model):
            out = c.completions.create(model=model, prompt="w40 w41", max_tokens=4, temperature=0, logprobs=0,
                                       extra_body={"ignore_eos": True})
            return tuple(round(x, 6) for x in out.choices[0].logprobs.token_logprobs)

        assert logprobs("tiny:stable") == logprobs("tiny:2") != logprobs("tiny:1")
        assert {logprobs("tiny:1"), logprobs("tiny:2")} == set(texts.values())
        c.close()
    finally:
        loop.run(server.shutdown())
        loop.close()


def test_a_cancelled_grpc_stream_frees_its_blocks(served):
    import queue

    import numpy
    grpcclient = pytest.importorskip("tritonclient.grpc")

    server, _ = served
    engine = server.runtime.repository.get("tiny").versions[1].generator
    headers = {"authorization": f"Bearer {TOKEN}"}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    got: "queue.Queue" = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)), headers=headers)
    x = grpcclient.InferInput("text_input", [1], "BYTES")
    x.set_data_from_numpy(numpy.array([b"w1 w2"], dtype=object))
    client.async_stream_infer("tiny", [x], parameters={"max_tokens": 120, "ignore_eos": True})
    result, error = got.get(timeout=30)
    assert error is None and engine.stats()["blocks"]["in_use"] > 0
    client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 10
    while engine.stats()["blocks"]["in_use"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats()["blocks"]["in_use"] == 0
    client.close()


def test_a_version_swap_under_generation_load_fails_nothing(tmp_path):
    """New generations go to the new version once it is READY; those running on the old one
    finish there (a draining GenerationEngine lets them)."""
    import threading

    import modelserve

    write_random_checkpoint(tmp_path / "tiny" / "1", vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2,
                            n_head=4, seed=3)
    (tmp_path / "tiny" / "config.yaml").write_text("generation: {max_num_seqs: 8}\nkeep_previous_versions: 0\n")
    with modelserve.Runtime(tmp_path, model_control_mode="explicit", load_models=["tiny"]) as rt:
        errors, done, stop = [], [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    out = rt.generate("tiny", [5, 6, 7], SamplingParams(max_tokens=30, ignore_eos=True))
                    done.append(len(out.token_ids))
                except Exception as e:  # pragma: no cover - reported by the assertion below
                    errors.append(e)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        while len(done) < 3:
            time.sleep(0.01)
        write_random_checkpoint(tmp_path / "tiny" / "2", vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2,
                                n_head=4, seed=4)
        rt.load_model("tiny")
        n = len(done)
        while len(done) < n + 6:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == [] and set(done) == {30}
        assert rt.repository.get("tiny").ready_versions() == [2]
