"""add_sub: the smallest Python-backend model (DESIGN.md, "Python backend").

OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, element-wise, FP32 [16] per request.
``execute`` receives whole batches: with ``max_batch_size: 64`` each input is ``[batch, 16]`` and
each output has the same first dimension.
"""

import numpy as np


class Model:
    def load(self, context):
        # context.config is the validated config.yaml, context.version_dir this folder and
        # context.device "cpu" or "cuda:N". numpy runs on the CPU whatever the device.
        for tensor in list(context.config.inputs) + list(context.config.outputs):
            if tensor.datatype != "FP32":
                raise ValueError(f"add_sub: {tensor.name} must be FP32 in config.yaml, got {tensor.datatype}")

    def execute(self, inputs):
        a = inputs["INPUT0"]
        b = inputs["INPUT1"]
        return {"OUTPUT0": np.add(a, b, dtype=np.float32), "OUTPUT1": np.subtract(a, b, dtype=np.float32)}
