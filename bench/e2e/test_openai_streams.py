"""The OpenAI route's cost (issue 17): 32 concurrent streams through ``modelserve serve``'s
``/v1/completions`` with the real ``openai`` async client, against the same 32 requests to the
in-process engine (``GenerationEngine``, the same model files and settings), on the example
``storyteller`` (examples/models). Prompts are its first words; every request generates 64
tokens (``ignore_eos``), at temperature 0.

Figures: generated tokens/s; time to first token and inter-token latency p50/p99 (measured by the
client: the first chunk with text, then the gaps between chunks). Target: tokens/s through the
route >= 0.8x the in-process engine's.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("torch")

from modelserve.generation import GenerationEngine, SamplingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STORY = ROOT / "examples" / "models" / "storyteller" / "1"
STREAMS = 32
TOKENS = 64
ROUNDS = 3


def prompts() -> list[str]:
    lines = [l for l in (ROOT / "examples" / "text" / "harbor_stories.txt").read_text().splitlines() if l]
    return [" ".join(lines[i % len(lines)].split(" ")[:4]) for i in range(STREAMS)]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1e3


@pytest.fixture(scope="module")
def table(tables):
    return tables(f"{STREAMS} concurrent streams of {TOKENS} tokens, storyteller (medians of {ROUNDS} rounds)",
                  ["case", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms", "ratio", "target",
                   "met"],
                  formats={"tokens/s": ".0f", "TTFT p50 ms": ".1f", "TTFT p99 ms": ".1f", "ITL p50 ms": ".2f",
                           "ITL p99 ms": ".2f", "ratio": ".2f"})


def in_process(engine: GenerationEngine) -> tuple[float, list[float], list[float]]:
    t0 = time.perf_counter()
    reqs = [(time.perf_counter(), engine.submit(p, SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)))
            for p in prompts()]
    ttft, itl, tokens = [], [], 0
    for submitted, r in reqs:
        r.result()
        stamps = [d.at for d in r.deltas if d.token_ids]
        tokens += sum(len(d.token_ids) for d in r.deltas)
        ttft.append(stamps[0] - submitted)
        itl += [b - a for a, b in zip(stamps, stamps[1:])]
    return tokens / (time.perf_counter() - t0), ttft, itl


async def through_route(port: int) -> tuple[float, list[float], list[float]]:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    ttft, itl, counts = [], [], []

    async def one(prompt: str) -> None:
        t0 = time.perf_counter()
        last, n = None, 0
        stream = await client.completions.create(model="storyteller", prompt=prompt, max_tokens=TOKENS, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.usage is not None:
                n = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].text:
                now = time.perf_counter()
                if last is None:
                    ttft.append(now - t0)
                else:
                    itl.append(now - last)
                last = now
        counts.append(n)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts()))
    rate = sum(counts) / (time.perf_counter() - t0)
    await client.close()
    return rate, ttft, itl


def test_openai_route_against_the_engine(tmp_path, table):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(STORY.parent, repo / "storyteller")
    cmd = [sys.executable, "-c", "import sys; from modelserve.cli import main; sys.exit(main())", "serve",
           "--model-repository", str(repo), "--grpc-port", "0", "--http-port", "0", "--shutdown-grace", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        if m := re.search(r"HTTP listening on \w+://[\d.]+:(\d+)", line):
            port = int(m.group(1))
        if "model versions READY" in line:
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    engine = GenerationEngine(STORY, max_num_seqs=16, max_model_len=128)  # storyteller's config.yaml
    try:
        in_process(engine)
        asyncio.run(through_route(port))  # warm both
        runs = {"in-process engine": [], "OpenAI route (openai.AsyncOpenAI)": []}
        for _ in range(ROUNDS):
            runs["in-process engine"].append(in_process(engine))
            runs["OpenAI route (openai.AsyncOpenAI)"].append(asyncio.run(through_route(port)))
    finally:
        engine.close()
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()
    rates = {}
    for case, results in runs.items():
        rates[case] = sorted(r[0] for r in results)[len(results) // 2]
        ttft = [x for r in results for x in r[1]]
        itl = [x for r in results for x in r[2]]
        table.row(case).update({"tokens/s": rates[case], "TTFT p50 ms": pct(ttft, 0.5), "TTFT p99 ms": pct(ttft, 0.99),
                                "ITL p50 ms": pct(itl, 0.5), "ITL p99 ms": pct(itl, 0.99)})
    ratio = rates["OpenAI route (openai.AsyncOpenAI)"] / rates["in-process engine"]
    table.row("OpenAI route (openai.AsyncOpenAI)").update(
        {"ratio": ratio, "target": ">= 0.8x in-process", "met": "yes" if ratio >= 0.8 else "NOT met"})
