"""GenerationEngine: continuous batching of autoregressive generation (issue 16).

The native scheduler (``_core.gen.Scheduler``, Note [Generation scheduling] in
csrc/gen/scheduler.h) decides every iteration: which sequences compute which tokens, in which KV
blocks. This engine runs that loop on a thread of its own: schedule, run the model on the step
(:class:`modelserve.generation.gpt2.GPT2`), sample the next token of every sequence whose chunk
ended at its last token, tell the scheduler which sequences finished, hand tokens to their
requests::

    engine = GenerationEngine("path/to/gpt2-folder", max_num_seqs=32)
    out = engine.generate([464, 2068], SamplingParams(max_tokens=20))   # or a string, with tokenizer.json
    for delta in engine.stream("Once upon", SamplingParams(max_tokens=20, temperature=0.8, seed=1)):
        print(delta.text, end="")
    engine.close()
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._native import core as _core
from ..errors import DeadlineExceededError, InternalError, InvalidArgumentError, UnavailableError
from .gpt2 import GPT2, StepInput, _torch

__all__ = ["GenerationEngine", "SamplingParams", "Completion", "Delta", "GenerationRequest"]

log = logging.getLogger("modelserve.generation")


@dataclass(frozen=True)
class SamplingParams:
    """How one request's tokens are chosen and when it stops."""

    max_tokens: int = 16
    temperature: float = 0.0   # 0: greedy
    top_k: int = 0             # 0: all tokens
    top_p: float = 1.0
    seed: int | None = None    # the same seed gives the same tokens, whatever else is in the batch
    min_tokens: int = 0        # no stop (token, string or end of sequence) before this many
    ignore_eos: bool = False
    stop: Sequence[str] = ()   # stop strings: excluded from the text, even when they span tokens
    stop_token_ids: Sequence[int] = ()
    logprobs: bool = False     # the log-probability of each chosen token

    def check(self, vocab_size: int) -> None:
        def bad(key: str, expected: str, value: Any) -> None:
            raise InvalidArgumentError(f"sampling parameter '{key}' must be {expected}, got {value!r}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", "an integer >= 1", self.max_tokens)
        if not self.temperature >= 0:
            bad("temperature", ">= 0", self.temperature)
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "an integer >= 0", self.top_k)
        if not 0 < self.top_p <= 1:
            bad("top_p", "in (0, 1]", self.top_p)
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            bad("min_tokens", f"an integer in [0, max_tokens={self.max_tokens}]", self.min_tokens)
        for t in self.stop_token_ids:
            if not 0 <= t < vocab_size:
                bad("stop_token_ids", f"token ids in [0, {vocab_size})", t)
        if isinstance(self.stop, str):
            bad("stop", "a list of strings", self.stop)


@dataclass
class Delta:
    """What one iteration added to a streamed request."""

    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    finish_reason: str | None = None  # set on the last delta: stop, length, cancelled
    at: float = 0.0                   # time.perf_counter() when the engine produced it


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str | None                   # None without a tokenizer
    finish_reason: str                 # stop, length
    logprobs: list[float] | None = None


class _Histogram:
    """Cumulative-bucket counts for Prometheus (``le`` bounds in seconds), updated on the engine
    thread and read at scrape time (a read may see one observation half-recorded; nothing more)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(self.bounds) and seconds > self.bounds[i]:
            i += 1
        self.counts[i] += 1
        self.sum += seconds
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        running, buckets = 0, []
        for bound, n in zip(self.bounds, self.counts):
            running += n
            buckets.append((bound, running))
        return {"buckets": buckets, "count": self.count, "sum": self.sum}


TTFT_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# Note [Chat template]
# ~~~~~~~~~~~~~~~~~~~~
# A chat's messages become one prompt: each message through "message" (str.format with {role}
# and {content}), then "generation_prompt", after which the model writes the answer. The default
# gives "user: Hi\nassistant:". A version folder's chat_template.json overrides either key, e.g.
# {"message": "<|{role}|>{content}<|end|>", "generation_prompt": "<|assistant|>"}.
DEFAULT_CHAT_TEMPLATE = {"message": "{role}: {content}\n", "generation_prompt": "assistant:"}


def _read_chat_template(path: Path) -> dict[str, str]:
    import json

    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise InvalidArgumentError(f"{path}: not valid JSON: {e}") from None
    unknown = sorted(set(raw) - set(DEFAULT_CHAT_TEMPLATE)) if isinstance(raw, dict) else None
    if unknown is None or unknown or not all(isinstance(v, str) for v in raw.values()):
        raise InvalidArgumentError(f"{path}: expected an object with string keys among "
                                   f"{sorted(DEFAULT_CHAT_TEMPLATE)}, got {raw!r}")
    try:
        raw.get("message", DEFAULT_CHAT_TEMPLATE["message"]).format(role="user", content="")
    except (KeyError, IndexError, ValueError) as e:
        raise InvalidArgumentError(f"{path}: 'message' may use only {{role}} and {{content}}: {e}") from None
    return raw


@dataclass
class _Live:
    """A request while it generates (touched by the engine thread only, but for the queue)."""

    id: int
    prompt: list[int]
    params: SamplingParams
    out: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)  # its last item is in `out`
    notify: Any = None     # called (on the engine thread) after every item: an event loop's wake-up
    submitted: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None
    # A traffic policy's bookkeeping (Runtime._generation): its first token, or its failure.
    on_first_token: Any = None
    on_error: Any = None
    # An observed request (modelserve.observe.Watch.finish_generation): its timeline and texts,
    # once, when it ends; `source` is the prompt as given, kept only then.
    on_done: Any = None
    source: Any = None
    scheduled_at: float | None = None
    first_token_at: float | None = None
    text_sent: int = 0     # characters of the decoded text already streamed
    stopped_at: int | None = None  # where a stop string begins in the text


def _report(live: _Live, report: Any, *args: Any) -> None:
    """Runs one of a request's traffic reports (the first token or its failure: only one ever
    runs); bookkeeping never stops the engine loop."""
    live.on_error = live.on_first_token = None
    try:
        report(*args)
    except Exception:
        log.exception("a generation's traffic report failed")


class GenerationRequest:
    """A submitted request: iterate for deltas, or ``result()``; ``cancel()`` frees its KV blocks
    within one iteration."""

    def __init__(self, engine: "GenerationEngine", live: _Live) -> None:
        self._engine = engine
        self._live = live
        self._deltas: list[Delta] = []
        self._finished: Delta | None = None
        self._error: BaseException | None = None

    def _accept(self, item: Any) -> bool:
        """Records one item taken from the queue; True when it is a delta to hand on."""
        if isinstance(item, BaseException):
            self._error = item
            return False
        self._deltas.append(item)
        if item.finish_reason is not None:
            self._finished = item
        return True

    def __iter__(self) -> Iterator[Delta]:
        while not self.finished:
            item = self._live.out.get()
            if self._accept(item):
                yield item
        if self._error is not None:
            raise self._error

    async def deltas_async(self, coalesce: bool = False) -> Any:
        """The deltas as an async iterator, for an event loop: the engine thread wakes the loop
        (``call_soon_threadsafe``) instead of a thread blocking on the queue. With ``coalesce``,
        deltas that queued up while the consumer was busy come as one (their tokens, text and
        log-probabilities joined): a slow reader gets fewer, larger chunks instead of falling
        further behind."""
        import asyncio

        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        self._live.notify = lambda: loop.call_soon_threadsafe(ready.set)
        while not self.finished:
            try:
                item = self._live.out.get_nowait()
            except queue.Empty:
                await ready.wait()
                ready.clear()
                continue
            while coalesce and isinstance(item, Delta) and item.finish_reason is None:
                try:
                    more = self._live.out.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, BaseException):
                    self._live.out.put(more)  # raised on the next round, after this delta
                    break
                item = Delta(item.token_ids + more.token_ids, item.text + more.text,
                             None if item.logprobs is None else item.logprobs + (more.logprobs or []),
                             more.finish_reason, more.at)
            if self._accept(item):
                yield item
        if self._error is not None:
            raise self._error

    @property
    def finished(self) -> bool:
        return self._finished is not None or self._error is not None

    @property
    def prompt_ids(self) -> list[int]:
        return list(self._live.prompt)

    @property
    def deltas(self) -> list[Delta]:
        """The deltas received so far (all of them after ``result()``)."""
        return list(self._deltas)

    def result(self) -> Completion:
        self._live.done.wait()  # no wake-up per token: the deltas are all queued by now
        for _ in self:
            pass
        live = self._live
        text = self._engine._text(live) if self._engine.tokenizer is not None else None
        return Completion(live.prompt, list(live.tokens), text, self._finished.finish_reason,
                          list(live.logprobs) if live.params.logprobs else None)

    def cancel(self) -> None:
        self._engine._cancel(self._live)


class GenerationEngine:
    """One generative model version: its weights, KV cache, scheduler and loop thread."""

    def __init__(
        self,
        folder: str | Path,
        *,
        block_size: int = 16,
        num_blocks: int | None = None,
        kv_cache_bytes: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        max_model_len: int | None = None,
        prefix_caching: bool = True,
        dtype: str = "float32",
        device: str = "cpu",
        name: str = "gpt2",
    ) -> None:
        folder = Path(folder)
        self.name = name
        self.model = GPT2(folder, dtype=dtype, device=device)
        c = self.model.config
        self.max_model_len = max_model_len or c.n_positions
        if self.max_model_len > c.n_positions:
            raise InvalidArgumentError(f"generation.max_model_len {self.max_model_len} exceeds the model's "
                                       f"n_positions {c.n_positions}")
        if num_blocks is not None and kv_cache_bytes is not None:
            raise InvalidArgumentError("give generation.num_blocks or generation.kv_cache_bytes, not both")
        per_block = self.model.kv_bytes_per_token() * block_size
        if num_blocks is None:
            if kv_cache_bytes is None:  # room for every seat at full length
                num_blocks = max_num_seqs * math.ceil(self.max_model_len / block_size)
            else:
                num_blocks = kv_cache_bytes // per_block
        self.block_size = block_size
        self.scheduler = _core.gen.Scheduler(
            block_size=block_size, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, max_model_len=self.max_model_len,
            prefix_caching=prefix_caching)
        # The KV cache: one buffer of the core's pool, viewed by torch through DLPack.
        torch = _torch()
        datatype = "FP64" if self.model.dtype == torch.float64 else "FP32"
        pool = _core.device_pool(torch.device(device).index or 0) if device.startswith("cuda") else _core.host_pool()
        self._kv_tensor = _core.Tensor.empty(datatype, list(self.model.kv_shape(num_blocks * block_size)), pool)
        self.kv = torch.from_dlpack(self._kv_tensor)
        # Pooled memory comes uninitialised. Attention reads slots past a sequence's end (the rest
        # of its last block, the padding of a batched decode) with weight exactly 0, and 0 x NaN
        # is NaN: every slot must hold a finite number from the start.
        self.kv.zero_()
        self.kv_cache_bytes = num_blocks * per_block
        self.tokenizer = None
        if (folder / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.eos = c.eos_token_id
        self.chat_template = dict(DEFAULT_CHAT_TEMPLATE)
        if (folder / "chat_template.json").exists():  # Note [Chat template]
            self.chat_template.update(_read_chat_template(folder / "chat_template.json"))
        self._ids = itertools.count(1)
        self.ttft = _Histogram(TTFT_BOUNDS)
        self.itl = _Histogram(ITL_BOUNDS)
        self.prompt_tokens = 0      # of admitted requests
        self.generated_tokens = 0
        self._live: dict[int, _Live] = {}
        self._lock = threading.Condition()
        self._cancelled: set[int] = set()
        self._unscheduled: set[int] = set()  # guarded by _lock: observed requests not yet scheduled
        self._open_step: dict[str, Any] | None = None  # scheduled, not yet completed (engine thread)
        self._closed = False
        self._accepting = True
        self._thread = threading.Thread(target=self._loop, name=f"modelserve-generate-{name}", daemon=True)
        self._thread.start()

    # --- requests -------------------------------------------------------------------------------
    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *, priority: int = 0,
               timeout_s: float | None = None, on_first_token: Any = None, on_error: Any = None,
               on_done: Any = None) -> GenerationRequest:
        """Enqueues a generation. ``on_first_token()`` and ``on_error(exception)`` run on the engine
        thread, once, whichever comes first (a traffic policy's bookkeeping). ``on_done(timeline,
        error)`` runs once when the request ends, on the engine thread (or the one that closes
        the engine): ``timeline`` has the perf_counter times ``submitted``, ``scheduled``,
        ``first_token`` and ``finished`` (None where it never got), ``prompt`` (as given), ``text``,
        ``tokens``, ``prompt_tokens`` and ``finish_reason``."""
        params = params or SamplingParams()
        params.check(self.model.config.vocab_size)
        ids = self._encode(prompt)
        if len(ids) + params.max_tokens > self.max_model_len:
            raise InvalidArgumentError(
                f"model '{self.name}': prompt of {len(ids)} tokens + max_tokens {params.max_tokens} exceeds "
                f"generation.max_model_len {self.max_model_len}")
        live = _Live(next(self._ids), ids, params, on_first_token=on_first_token, on_error=on_error,
                     on_done=on_done, source=prompt if on_done is not None else None)
        with self._lock:
            if not self._accepting:
                raise UnavailableError(f"model '{self.name}': the generation engine is closed")
            self.scheduler.add(live.id, np.asarray(ids, np.int32), priority=priority, timeout_s=timeout_s)
            self._live[live.id] = live
            if on_done is not None:
                self._unscheduled.add(live.id)
            self.prompt_tokens += len(ids)
            self._lock.notify_all()
        return GenerationRequest(self, live)

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kw: Any) -> Completion:
        return self.submit(prompt, params, **kw).result()

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kw: Any) -> Iterator[Delta]:
        request = self.submit(prompt, params, **kw)
        try:
            yield from request
        finally:  # the caller stopped iterating (break, an exception, the generator closed)
            if request._finished is None:
                request.cancel()

    def stats(self) -> dict[str, Any]:
        """The scheduler's counters (sequences, iterations, preemptions, prefill, decode and
        prefix-cached tokens, KV blocks) and the engine's: prompt and generated tokens, and the
        time-to-first-token and inter-token histograms."""
        s = self.scheduler.stats()
        s.update(prompt_tokens_total=self.prompt_tokens, generated_tokens_total=self.generated_tokens,
                 time_to_first_token=self.ttft.snapshot(), inter_token_latency=self.itl.snapshot())
        return s

    def close(self, drain: bool = False, timeout_s: float = 30.0) -> None:
        """Stops taking requests; with ``drain`` lets those admitted finish (up to ``timeout_s``),
        then stops the loop. Requests still running then fail with UNAVAILABLE."""
        with self._lock:
            self._accepting = False
            if drain:
                self._lock.wait_for(lambda: not self._live, timeout=timeout_s)
            self._closed = True
            self._lock.notify_all()
        self._thread.join(30)
        for live in list(self._live.values()):
            self._emit(live, UnavailableError(f"model '{self.name}': the generation engine closed"))
            live.done.set()
        self._live.clear()

    def __enter__(self) -> "GenerationEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- text -----------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Any]) -> str:
        """The prompt for a chat (Note [Chat template])."""
        t = self.chat_template
        parts = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InvalidArgumentError(f"messages[{i}] must be {{'role': str, 'content': str}}, got {m!r}")
            parts.append(t["message"].format(role=m["role"], content=m["content"]))
        return "".join(parts) + t["generation_prompt"]

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgumentError(f"model '{self.name}' has no tokenizer.json: send token ids, not text")
            ids = self.tokenizer.encode(prompt).ids
        else:
            ids = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if not ids:
            raise InvalidArgumentError(f"model '{self.name}': the prompt is empty")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidArgumentError(f"model '{self.name}': prompt token {bad[0]} is outside the vocabulary [0, {vocab})")
        return ids

    def _text(self, live: _Live) -> str:
        text = self.tokenizer.decode(live.tokens) if self.tokenizer is not None else ""
        return text if live.stopped_at is None else text[: live.stopped_at]

    # --- the loop -------------------------------------------------------------------------------
    def _cancel(self, live: _Live) -> None:
        with self._lock:
            if live.id in self._live:
                self._cancelled.add(live.id)
                self._lock.notify_all()

    def _emit(self, live: _Live, item: Any) -> None:
        live.out.put(item)
        if live.notify is not None:
            live.notify()
        report = None
        if isinstance(item, BaseException):
            report, arg = live.on_error, item
        elif isinstance(item, Delta) and item.finish_reason == "cancelled" and live.last_token_at is None:
            from ..errors import CancelledError

            report, arg = live.on_error, CancelledError("cancelled before its first token")
        if report is not None:
            _report(live, report, arg)
        if live.on_done is not None and (isinstance(item, BaseException) or item.finish_reason is not None):
            self._done(live, item)

    def _done(self, live: _Live, last: Any) -> None:
        """Runs an observed request's ``on_done`` (once): the observer never stops the loop."""
        on_done, live.on_done = live.on_done, None
        with self._lock:
            self._unscheduled.discard(live.id)
        error = last if isinstance(last, BaseException) else None
        reason = None if error is not None else last.finish_reason
        if reason == "cancelled":
            from ..errors import CancelledError

            error = CancelledError(f"model '{self.name}': the generation was cancelled")
        timeline = {"submitted": live.submitted, "scheduled": live.scheduled_at, "first_token": live.first_token_at,
                    "finished": time.perf_counter(), "prompt": live.source, "tokens": len(live.tokens),
                    "prompt_tokens": len(live.prompt), "finish_reason": reason,
                    "text": self._text(live) if self.tokenizer is not None else list(live.tokens)}
        try:
            on_done(timeline, error)
        except Exception:
            log.exception("model '%s': observing a generation failed", self.name)

    def _drop(self, rid: int) -> _Live | None:
        with self._lock:
            live = self._live.pop(rid, None)
            self._lock.notify_all()  # a draining close() waits for _live to empty
        return live

    def _finish(self, live: _Live, reason: str, new: list[int], logprobs: list[float]) -> None:
        self._drop(live.id)
        self._emit(live, self._delta(live, new, logprobs, reason))
        live.done.set()

    def _delta(self, live: _Live, new: list[int], logprobs: list[float], reason: str | None) -> Delta:
        text = ""
        if self.tokenizer is not None:
            full = self._text(live)
            # Hold back what could be the start of a stop string until it is decided.
            hold = 0 if reason is not None else max((len(s) - 1 for s in live.params.stop), default=0)
            upto = max(live.text_sent, len(full) - hold)
            text, live.text_sent = full[live.text_sent:upto], upto
        return Delta(new, text, logprobs if live.params.logprobs else None, reason, time.perf_counter())

    def _loop(self) -> None:
        """The engine thread. An iteration that fails outside the model (a bug) fails the requests
        alive at that moment with INTERNAL and the loop goes on: it never dies with requests
        waiting on it."""
        while not self._closed:
            try:
                self._iterate()
            except Exception as e:
                log.exception("model '%s': a generation iteration failed", self.name)
                failed = InternalError(f"model '{self.name}': the generation loop failed: {type(e).__name__}: {e}")
                with self._lock:
                    lives, self._live = list(self._live.values()), {}
                    self._lock.notify_all()
                for live in lives:
                    self.scheduler.abort(live.id)
                    self._emit(live, failed)
                    live.done.set()
                self._reset_scheduler_step()

    def _reset_scheduler_step(self) -> None:
        """After a failed iteration: close the step the scheduler may still hold open (its
        sequences were aborted above, so they leave with it)."""
        step, self._open_step = self._open_step, None
        if step is not None:
            try:
                self.scheduler.complete([0] * int(step["sample"].sum()), [int(i) for i in step["ids"]])
            except Exception:
                log.exception("model '%s': the failed step could not be closed", self.name)

    def _iterate(self) -> None:
        """One iteration: cancellations, schedule, the model, sampling, completion."""
        torch = _torch()
        with self._lock:
            while not self._closed and not self.scheduler.has_work() and not self._cancelled:
                self._lock.wait()
            if self._closed:
                return
            for rid in self._cancelled:
                live = self._live.pop(rid, None)
                self._lock.notify_all()
                if live is not None and self.scheduler.abort(rid):
                    self._emit(live, Delta([], "", None, "cancelled", time.perf_counter()))
                    live.done.set()
            self._cancelled.clear()
        step = self._open_step = self.scheduler.schedule()
        if self._unscheduled:  # observed requests record when they first ran
            with self._lock:
                ran = set(int(i) for i in step["ids"]) & self._unscheduled
                self._unscheduled -= ran
            at = time.perf_counter()
            for rid in ran:
                live = self._live.get(rid)
                if live is not None:
                    live.scheduled_at = at
        for rid in step["expired"]:
            live = self._drop(rid)
            if live is not None:
                self._emit(live, DeadlineExceededError(f"model '{self.name}': the request's deadline passed "
                                                   "before it was scheduled"))
                live.done.set()
        if len(step["ids"]) == 0:
            self.scheduler.complete([], [])
            self._open_step = None
            return
        try:
            with torch.inference_mode():
                logits = self.model.forward(StepInput(
                    step["tokens"], step["positions"], step["slots"], step["starts"], step["counts"],
                    step["block_tables"], step["sample"]), self.kv, self.block_size)
                sampled_ids = [int(i) for i, s in zip(step["ids"], step["sample"]) if s]
                choices = self._sample_all([self._live[i] for i in sampled_ids], logits)
        except Exception as e:  # the model failed: every request of the step fails with it
            failed = [int(i) for i in step["ids"]]
            self.scheduler.complete([0] * int(step["sample"].sum()), failed)
            self._open_step = None
            for rid in failed:
                live = self._drop(rid)
                if live is not None:
                    self._emit(live, e)
                    live.done.set()
            return
        finished = []
        now = time.perf_counter()
        self.generated_tokens += len(choices)
        for rid, (token, logprob) in zip(sampled_ids, choices):
            live = self._live[rid]
            if live.last_token_at is None:
                live.first_token_at = now
                self.ttft.observe(now - live.submitted)
                if live.on_first_token is not None:  # a traffic policy judges generations by it
                    _report(live, live.on_first_token)
            else:
                self.itl.observe(now - live.last_token_at)
            live.last_token_at = now
            live.tokens.append(token)
            live.logprobs.append(logprob)
            reason = self._stop_reason(live, token)
            if reason is not None:
                finished.append(rid)
                self._finish(live, reason, [token], [logprob])
            else:
                self._emit(live, self._delta(live, [token], [logprob], None))
        self.scheduler.complete([t for t, _ in choices], finished)
        self._open_step = None

    def _stop_reason(self, live: _Live, token: int) -> str | None:
        p = live.params
        n = len(live.tokens)
        if n >= p.min_tokens:
            if token in p.stop_token_ids or (not p.ignore_eos and token == self.eos):
                return "stop"
            if p.stop and self.tokenizer is not None:
                text = self.tokenizer.decode(live.tokens)
                found = [i for i in (text.find(s) for s in p.stop) if i >= 0]
                if found:
                    live.stopped_at = min(found)
                    return "stop"
        return "length" if n >= p.max_tokens else None

    def _sample_all(self, lives: list[_Live], logits: Any) -> list[tuple[int, float]]:
        """The next token of each sequence, with its log-probability under the model: greedy rows
        in one argmax, the others one by one (their own temperature, top-k, top-p and seed)."""
        if not lives:
            return []
        torch = _torch()
        tokens = logits.argmax(-1).tolist()
        for k, live in enumerate(lives):
            if live.params.temperature > 0:
                tokens[k] = self._sample(live, logits[k])
        logprobs = torch.log_softmax(logits.double(), -1)
        chosen = logprobs[torch.arange(len(lives)), torch.tensor(tokens)].tolist()
        return list(zip(tokens, chosen))

    def _sample(self, live: _Live, logits: Any) -> int:
        torch = _torch()
        p = live.params
        scores = logits.double() / p.temperature
        if p.top_k:
            kth = torch.topk(scores, min(p.top_k, scores.shape[0])).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1:
            probs_sorted, order = torch.sort(torch.softmax(scores, -1), descending=True)
            drop = probs_sorted.cumsum(-1) - probs_sorted > p.top_p  # keep the smallest set reaching top_p
            scores[order[drop]] = float("-inf")
        probs = torch.softmax(scores, -1)
        generator = None
        if p.seed is not None:  # one stream per token index: independent of batching and preemption
            generator = torch.Generator().manual_seed((p.seed * 1_000_003 + len(live.tokens)) % (1 << 63))
        return int(torch.multinomial(probs, 1, generator=generator))
