"""Long-running checks of ``modelserve serve`` (not run in CI; each takes minutes to hours).

Each is a plain script run from the repository root; each takes a duration (or a count) and
``--seed``, measures the capacity it loads against first in the same run, prints its figures
beside their targets (PASS/FAIL, exit status 1 on any FAIL) and writes a PNG plot and a JSON of
the figures under ``--out`` (default /tmp/modelserve-soak):

- ``python -m bench.soak.soak [--duration 1800 | --smoke]``: mixed gRPC/HTTP, unary/streaming,
  batched, some 1 MiB payloads, at half of capacity: RSS of the server's process tree flat
  after the warm-up, zero errors;
- ``python -m bench.soak.load_unload [--cycles 1000]``: an ONNX and a Python model loaded and
  unloaded in a loop in-process: RSS slope per cycle;
- ``python -m bench.soak.swaps [--swaps 20]``: version swaps at half of capacity: no failed
  request, p99 during the swaps against the steady p99;
- ``python -m bench.soak.overload [--duration 60]``: 3x capacity against queue limits and
  deadlines: refusals fast and with a retry hint, admitted requests within their deadline, RSS
  flat.
"""
