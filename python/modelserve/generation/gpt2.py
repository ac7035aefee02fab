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

__all__ = ["GPT2", "GPT2Config", "StepInput", "write_random_checkpoint"]


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
        # Sequences computing one token (decoding) attend together: their contexts' slots padded
        # into one [decodes, longest context] index, the padding masked. A prefill chunk attends on
        # its own (its queries are many already).
        offsets = np.concatenate([[0], np.cumsum(step.counts)])
        decode = [i for i in range(len(step.starts)) if step.counts[i] == 1]
        prefill = [i for i in range(len(step.starts)) if step.counts[i] != 1]
        arange = torch.arange(block_size, device=dev)
        tables = torch.from_numpy(step.block_tables).to(dev)

        def context_slots(rows: list[int]) -> Any:  # [len(rows), blocks * block_size]
            return (tables[rows][:, :, None].clamp(min=0) * block_size + arange).reshape(len(rows), -1)

        if decode:
            d_rows = torch.tensor([int(offsets[i]) for i in decode], device=dev)
            d_len = torch.from_numpy((step.starts[decode] + 1).astype(np.int64)).to(dev)
            # Whole blocks are gathered (one copy of block_size slots each), not slot by slot.
            d_blocks = (int(d_len.max()) + block_size - 1) // block_size
            d_tables = tables[decode][:, :d_blocks].clamp(min=0).reshape(-1)
            d_width = d_blocks * block_size
            d_mask = torch.arange(d_width, device=dev)[None, :] >= d_len[:, None]  # [D, width]: padding
            n_blocks_total = kv.shape[2] // block_size
        spans = []
        for i in prefill:
            start, count = int(step.starts[i]), int(step.counts[i])
            context = start + count
            ctx = context_slots([i])[0, :context]
            future = torch.arange(context, device=dev)[None, :] > torch.arange(start, context, device=dev)[:, None]
            spans.append((int(offsets[i]), int(offsets[i]) + count, ctx, future))
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
            if decode:
                by_block = kv[li].view(2, n_blocks_total, block_size, c.n_head, self.head_dim)
                keys = by_block[0].index_select(0, d_tables).view(len(decode), d_width, c.n_head, self.head_dim)
                values = by_block[1].index_select(0, d_tables).view(len(decode), d_width, c.n_head, self.head_dim)
                out[d_rows] = F.scaled_dot_product_attention(  # [D, H, 1, hd]; attn_mask True = attend
                    q[d_rows].unsqueeze(2), keys.transpose(1, 2), values.transpose(1, 2),
                    attn_mask=~d_mask[:, None, None, :], scale=scale).squeeze(2)
            for a, b, ctx, future in spans:
                keys, values = kv[li, 0, ctx], kv[li, 1, ctx]                 # [context, H, hd]
                out[a:b] = F.scaled_dot_product_attention(                    # [H, count, hd]
                    q[a:b].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
                    attn_mask=~future[None], scale=scale).transpose(0, 1)
            x = x + out.reshape(n, c.n_embd) @ L["attn.c_proj.weight"] + L["attn.c_proj.bias"]
            h = F.layer_norm(x, (c.n_embd,), L["ln_2.weight"], L["ln_2.bias"], c.layer_norm_epsilon)
            h = F.gelu(h @ L["mlp.c_fc.weight"] + L["mlp.c_fc.bias"], approximate="tanh")
            x = x + h @ L["mlp.c_proj.weight"] + L["mlp.c_proj.bias"]
        last = [int(offsets[i + 1]) - 1 for i in range(len(step.starts)) if step.sample[i]]
        if not last:
            return torch.empty((0, c.vocab_size), dtype=self.dtype, device=dev)
        rows = x[torch.tensor(last, device=dev)]
        rows = F.layer_norm(rows, (c.n_embd,), self.ln_f[0], self.ln_f[1], c.layer_norm_epsilon)
        return rows @ self.wte.T


def write_random_checkpoint(folder: str | Path, *, vocab_size: int = 512, n_positions: int = 512, n_embd: int = 128,
                            n_layer: int = 4, n_head: int = 4, seed: int = 0) -> Path:
    """Writes a randomly initialised GPT-2 checkpoint (``config.json`` + ``model.safetensors``, the
    layout and tensor names Hugging Face uses) to ``folder``: a model to try the engine and measure
    it with, no download needed."""
    torch = _torch()
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float = 0.02) -> Any:
        return torch.randn(*shape, generator=g) * std

    e = n_embd
    tensors = {"wte.weight": normal(vocab_size, e), "wpe.weight": normal(n_positions, e, std=0.01),
               "ln_f.weight": torch.ones(e), "ln_f.bias": torch.zeros(e)}
    for i in range(n_layer):
        p = f"h.{i}."
        tensors.update({
            p + "ln_1.weight": torch.ones(e), p + "ln_1.bias": torch.zeros(e),
            p + "attn.c_attn.weight": normal(e, 3 * e), p + "attn.c_attn.bias": torch.zeros(3 * e),
            p + "attn.c_proj.weight": normal(e, e), p + "attn.c_proj.bias": torch.zeros(e),
            p + "ln_2.weight": torch.ones(e), p + "ln_2.bias": torch.zeros(e),
            p + "mlp.c_fc.weight": normal(e, 4 * e), p + "mlp.c_fc.bias": torch.zeros(4 * e),
            p + "mlp.c_proj.weight": normal(4 * e, e), p + "mlp.c_proj.bias": torch.zeros(e),
        })
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": vocab_size, "n_positions": n_positions, "n_embd": n_embd,
        "n_layer": n_layer, "n_head": n_head, "layer_norm_epsilon": 1e-5, "eos_token_id": vocab_size - 1}))
    return folder
