"""Load/unload: does loading and unloading models over and over leak memory?

In-process: a ``modelserve.Runtime`` in model control mode ``explicit`` over a temporary copy of
two example models, ``mlp`` (ONNX, onnxruntime session, warm-up) and ``add_sub`` (Python
backend). One cycle loads both (``load_model``: load and warm-up to READY), runs one request on
each (checking the answer), and unloads both (``unload_model``: drain and release). After each
cycle a ``gc.collect()``, glibc's ``malloc_trim(0)`` (so that free memory the allocator happens
to keep or return does not count: without it the RSS swings by ~4 MiB from cycle to cycle as
onnxruntime's freed session memory is kept or given back, which a leak of 1 KiB/cycle drowns in)
and the RSS of this process's tree (VmRSS).

Target: the slope of a least-squares line through RSS against cycle number over cycles
``--skip`` (50) to ``--cycles`` (1000) is below 1 KiB per cycle (the first cycles fill
allocator arenas, import caches and onnxruntime's one-time state; with fewer than 200 cycles
the skip is a quarter of them). Printed beside it: the RSS at the skip and at the end, the
growth over the fitted range, seconds per cycle. Plot: ``load_unload.png`` (RSS per cycle and
the fitted line). Run: ``python -m bench.soak.load_unload --cycles 1000``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import modelserve
from bench.e2e.test_runtime_throughput import REPOSITORY

from ._common import Report, load_average, parser, positive, pyplot, tree_rss

SLOPE_TARGET = 1024.0  # bytes per cycle, below
MODELS = ("mlp", "add_sub")


def trim() -> None:
    """Gives the allocator's free memory back to the system (glibc only; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def make_repository(root: Path) -> Path:
    for model in MODELS:
        shutil.copytree(REPOSITORY / model, root / model)
    return root


def one_cycle(rt: modelserve.Runtime, models: list[str], x: dict[str, dict[str, np.ndarray]]) -> None:
    for model in models:
        rt.load_model(model)
    if "mlp" in models:
        out = rt.infer("mlp", x["mlp"])
        assert out["OUTPUT0"].shape == (1, 10), f"mlp answered OUTPUT0 of shape {out['OUTPUT0'].shape}"
    if "add_sub" in models:
        out = rt.infer("add_sub", x["add_sub"])
        assert np.array_equal(out["OUTPUT0"], x["add_sub"]["INPUT0"] + x["add_sub"]["INPUT1"]), \
            "add_sub answered a wrong OUTPUT0"
    for model in models:
        rt.unload_model(model)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--cycles", type=int, default=1000, help="load/unload cycles (default 1000)")
    p.add_argument("--skip", type=int, default=50,
                   help="cycles left out of the fit (default 50; a quarter of --cycles below 200)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"the models cycled, comma-separated (default {','.join(MODELS)}; one alone to tell which leaks)")
    args = p.parse_args(argv)
    positive(p, args, "cycles")
    models = args.models.split(",")
    if not models or not set(models) <= set(MODELS):
        p.error(f"--models must name some of {', '.join(MODELS)}, got {args.models!r}")
    if args.cycles < 200:
        args.skip = min(args.skip, args.cycles // 4)
    if not 0 <= args.skip < args.cycles - 2:
        p.error(f"--skip must leave at least 3 cycles to fit, got --skip {args.skip} of --cycles {args.cycles}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_average()}", flush=True)
    rng = np.random.default_rng(args.seed)
    x = {"mlp": {"INPUT0": rng.standard_normal((1, 256), dtype=np.float32)},
         "add_sub": {"INPUT0": rng.standard_normal((1, 16), dtype=np.float32),
                     "INPUT1": rng.standard_normal((1, 16), dtype=np.float32)}}
    rss = np.zeros(args.cycles)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelserve-load-unload-") as tmp, \
            modelserve.Runtime(make_repository(Path(tmp)), model_control_mode="explicit") as rt:
        for i in range(args.cycles):
            one_cycle(rt, models, x)
            gc.collect()
            trim()
            rss[i] = tree_rss(os.getpid())
            if (i + 1) % 100 == 0:
                print(f"cycle {i + 1}: rss {rss[i] / 2**20:.1f} MiB, {time.perf_counter() - t0:.0f} s", flush=True)
    elapsed = time.perf_counter() - t0

    cycles = np.arange(1, args.cycles + 1)
    fit = slice(args.skip, args.cycles)
    slope, intercept = np.polyfit(cycles[fit], rss[fit], 1)
    report = Report(f"load/unload: {args.cycles} cycles of {' and '.join(models)}, in-process")
    report.info("seconds per cycle", elapsed / args.cycles, ".3f")
    report.info(f"rss at cycle {args.skip + 1} MiB", rss[args.skip] / 2**20, ".1f")
    report.info(f"rss at cycle {args.cycles} MiB", rss[-1] / 2**20, ".1f")
    report.info(f"growth, cycles {args.skip + 1}-{args.cycles} KiB", (rss[-1] - rss[args.skip]) / 1024, ".0f")
    report.check(f"rss slope, cycles {args.skip + 1}-{args.cycles} (B/cycle)", float(slope),
                 slope < SLOPE_TARGET, f"< {SLOPE_TARGET:.0f}", ".0f")
    report.info("load average at end", load_average())
    report.print()
    report.save(args.out, "load_unload")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot(cycles, rss / 2**20, lw=1, label="RSS after the cycle")
    ax.plot(cycles[fit], (slope * cycles[fit] + intercept) / 2**20, "r--",
            label=f"fit from cycle {args.skip + 1}: {slope:.0f} B/cycle")
    ax.set_xlabel("cycle")
    ax.set_ylabel("MiB")
    ax.set_title(f"load/unload of {' and '.join(models)} (seed {args.seed}, {time.strftime('%Y-%m-%d %H:%M')})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "load_unload.png", dpi=100)
    plt.close(fig)
    print(f"wrote {args.out / 'load_unload.png'} and {args.out / 'load_unload.json'}")
    return report.status


if __name__ == "__main__":
    raise SystemExit(main())
