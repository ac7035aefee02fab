"""The ``gpt2`` backend: a generative model (``<version>/config.json`` + ``model.safetensors``,
optionally ``tokenizer.json``), served by :class:`modelserve.generation.GenerationEngine` with
continuous batching over a paged KV cache instead of the dynamic batcher. Configured by the
``generation:`` key of config.yaml; requests go through ``Runtime.generate`` / ``Runtime.stream``."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from .base import Backend, register


@register
class GPT2Backend(Backend):
    name = "gpt2"
    model_file = "model.safetensors"
    generative = True

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InvalidArgumentError(f"{self.context.label} is generative: send it generate requests")
