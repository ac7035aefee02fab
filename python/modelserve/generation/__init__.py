"""Generative models with continuous batching over a paged KV cache (issue 16): the native
scheduler (``_core.gen``), the GPT-2 architecture in torch, sampling and the engine loop."""

from .engine import Completion, Delta, GenerationEngine, GenerationRequest, SamplingParams

__all__ = ["GenerationEngine", "GenerationRequest", "SamplingParams", "Completion", "Delta"]
