"""The GPT-2 architecture over a paged KV cache (``backend: gpt2``).

Loads a checkpoint folder (``config.json`` and ``model.safetensors``, the layout Hugging Face
writes) and runs one iteration of the generation scheduler at a time: the new tokens of every
sequence in the step are embedded and pushed through the layers together; each layer writes their
keys and values into the KV cache slots the scheduler gave them, and each sequence's queries attend
to its own positions, read through its block table (Note [KV blocks] in csrc/gen/kv_blocks.h).

The KV cache is a torch view (DLPack) of one buffer of the core's memory pool:
``[layers, 2, num_blocks * block_size, heads, head_dim]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..backends.base import MissingExtraError

__all__ = ["GPT2", "GPT2Config", "StepInput"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingExtraError("gpt2", "torch", "generate") from None
    return torch


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int | None = None

    @classmethod
    def from_file(cls, path: Path) -> "GPT2Config":
        raw = json.loads(path.read_text())
        missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in raw]
        if missing:
            raise InvalidArgumentError(f"{path}: a GPT-2 config needs {missing}")
        if raw["n_embd"] % raw["n_head"]:
            raise InvalidArgumentError(f"{path}: n_embd {raw['n_embd']} is not a multiple of n_head {raw['n_head']}")
        return cls(vocab_size=raw["vocab_size"], n_positions=raw.get("n_positions", 1024), n_embd=raw["n_embd"],
                   n_layer=raw["n_layer"], n_head=raw["n_head"],
                   layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5), eos_token_id=raw.get("eos_token_id"))


@dataclass
class StepInput:
    """One iteration, as the scheduler formed it (``_core.gen.Scheduler.schedule()``)."""

    tokens: np.ndarray        # [T] int64, every sequence's new tokens back to back
    positions: np.ndarray     # [T]
    slots: np.ndarray         # [T] KV slot of each
    starts: np.ndarray        # [S] first position computed, per sequence
    counts: np.ndarray        # [S] tokens computed, per sequence
    block_tables: np.ndarray  # [S, max blocks], -1 padded
    sample: np.ndarray        # [S] bool: the logits of its last token are wanted


class GPT2:
    """GPT-2 weights and the paged forward pass. ``dtype``: ``"float32"`` or ``"float64"``."""

    def __init__(self, folder: Path, dtype: str = "float32", device: str = "cpu") -> None:
        torch = _torch()
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingExtraError("gpt2", "safetensors", "generate") from None
        folder = Path(folder)
        self.config = GPT2Config.from_file(folder / "config.json")
        weights_file = folder / "model.safetensors"
        if not weights_file.exists():
            raise InvalidArgumentError(f"{folder}: no model.safetensors")
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        raw = load_file(str(weights_file))
        prefix = "transformer." if any(k.startswith("transformer.") for k in raw) else ""

        def w(name: str) -> Any:
            key = prefix + name
            if key not in raw:
                raise InvalidArgumentError(f"{weights_file}: missing tensor '{key}'")
            return raw[key].to(device=self.device, dtype=self.dtype)

        c = self.config
        self.wte, self.wpe = w("wte.weight"), w("wpe.weight")
        if tuple(self.wte.shape) != (c.vocab_size, c.n_embd):
            raise InvalidArgumentError(f"{weights_file}: wte is {tuple(self.wte.shape)}, config says "
                                       f"({c.vocab_size}, {c.n_embd})")
        self.layers = []
        for i in range(c.n_layer):
            p = f"h.{i}."
            self.layers.append({k: w(p + k) for k in (
                "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias")})
        self.ln_f = (w("ln_f.weight"), w("ln_f.bias"))
        self.head_dim = c.n_embd // c.n_head

    def kv_shape(self, num_slots: int) -> tuple[int, ...]:
        c = self.config
        return (c.n_layer, 2, num_slots, c.n_head, self.head_dim)

    def kv_bytes_per_token(self) -> int:
        c = self.config
        return c.n_layer * 2 * c.n_embd * (8 if self.dtype == _torch().float64 else 4)

    def forward(self, step: StepInput, kv: Any, block_size: int) -> Any:
        """The logits [sampled sequences, vocab] of the step's sampled sequences, in order."""
        torch = _torch()
        F = torch.nn.functional
        c = self.config
        dev = self.device
        tokens = torch.from_numpy(step.tokens).to(dev)
        positions = torch.from_numpy(step.positions).to(dev)
        slots = torch.from_numpy(step.slots).to(dev)
        n = tokens.shape[0]
        # Per sequence: where its queries are in the step, and the KV slots of its context.
        spans, context_slots, masks = [], [], []
        offset = 0
        for i in range(len(step.starts)):
            start, count = int(step.starts[i]), int(step.counts[i])
            context = start + count
            table = torch.from_numpy(step.block_tables[i][: (context + block_size - 1) // block_size]).to(dev)
            ctx = (table[:, None] * block_size + torch.arange(block_size, device=dev)[None, :]).reshape(-1)[:context]
            q_pos = torch.arange(start, context, device=dev)[:, None]
            k_pos = torch.arange(context, device=dev)[None, :]
            spans.append((offset, offset + count))
            context_slots.append(ctx)
            masks.append(k_pos > q_pos)  # [count, context]: True where a key lies in the future
            offset += count
        scale = 1.0 / math.sqrt(self.head_dim)
        x = self.wte[tokens] + self.wpe[positions]
        for li, L in enumerate(self.layers):
            h = F.layer_norm(x, (c.n_embd,), L["ln_1.weight"], L["ln_1.bias"], c.layer_norm_epsilon)
            qkv = h @ L["attn.c_attn.weight"] + L["attn.c_attn.bias"]
            q, k, v = qkv.split(c.n_embd, dim=1)
            q = q.view(n, c.n_head, self.head_dim)
            kv[li, 0, slots] = k.view(n, c.n_head, self.head_dim)
            kv[li, 1, slots] = v.view(n, c.n_head, self.head_dim)
            out = torch.empty_like(q)
            for (a, b), ctx, mask in zip(spans, context_slots, masks):
                keys, values = kv[li, 0, ctx], kv[li, 1, ctx]                 # [context, H, D]
                scores = torch.einsum("qhd,khd->hqk", q[a:b], keys) * scale  # [H, count, context]
                scores = scores.masked_fill(mask[None], float("-inf"))
                out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)
            x = x + out.reshape(n, c.n_embd) @ L["attn.c_proj.weight"] + L["attn.c_proj.bias"]
            h = F.layer_norm(x, (c.n_embd,), L["ln_2.weight"], L["ln_2.bias"], c.layer_norm_epsilon)
            h = F.gelu(h @ L["mlp.c_fc.weight"] + L["mlp.c_fc.bias"], approximate="tanh")
            x = x + h @ L["mlp.c_proj.weight"] + L["mlp.c_proj.bias"]
        last = [b - 1 for (a, b), s in zip(spans, step.sample) if s]
        if not last:
            return torch.empty((0, c.vocab_size), dtype=self.dtype, device=dev)
        rows = x[torch.tensor(last, device=dev)]
        rows = F.layer_norm(rows, (c.n_embd,), self.ln_f[0], self.ln_f[1], c.layer_norm_epsilon)
        return rows @ self.wte.T
