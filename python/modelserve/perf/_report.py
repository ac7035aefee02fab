"""The report of a run: an aligned table, CSV, JSON, and the latency/throughput plot."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from ._load import SATURATED, StepResult

__all__ = ["render", "notes", "plot", "require_matplotlib", "PLOT_INSTALL_HINT"]

PLOT_INSTALL_HINT = "--plot needs matplotlib, which is not installed: pip install matplotlib"

_CSV_FIELDS = ["mode", "concurrency", "target_rate", "duration_s", "batch_size", "requests",
               "errors", "requests_per_s", "inferences_per_s", "p50_ms", "p90_ms", "p99_ms",
               "max_ms", "mean_ms", "sent_per_s", "drops", "client_cpu_percent",
               "loop_busy_percent", "client_saturated", "first_error"]


def _label(r: StepResult) -> str:
    return f"concurrency {r.concurrency}" if r.mode == "concurrency" else f"rate {r.target_rate:g}/s"


def notes(steps: Sequence[StepResult]) -> list[str]:
    """What a reader must know beside the numbers: errors, drops, a client that saturated."""
    out = []
    for r in steps:
        if r.errors:
            out.append(f"{_label(r)}: {r.errors} error{'s' if r.errors != 1 else ''}; "
                       f"first: {r.first_error}")
        if r.drops:
            out.append(f"{_label(r)}: {r.drops} arrivals dropped (found --max-outstanding "
                       "requests in flight)")
        if r.sent_per_s is not None and r.sent_per_s < 0.9 * r.target_rate:
            out.append(f"{_label(r)}: sent only {r.sent_per_s:.1f}/s: the client could not "
                       "keep to the schedule")
    saturated = [r for r in steps if r.client_saturated]
    if saturated:
        busy = ", ".join(f"{_label(r)} {r.loop_busy_percent:.0f}%" for r in saturated)
        out.append(f"* client-bound: this process's event loop was >= {SATURATED:.0%} busy "
                   f"({busy}); those steps measure the client's limit, not the server's. Run "
                   "several perf processes, or one on another machine, to load the server harder.")
    return out


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _table(steps: Sequence[StepResult], header: Sequence[str]) -> str:
    open_loop = bool(steps) and steps[0].mode == "request_rate"
    cols = (["target/s", "sent/s"] if open_loop else ["concurrency"]) + [
        "req/s", "infer/s", "p50 ms", "p90 ms", "p99 ms", "max ms"] + (
        ["drops"] if open_loop else []) + ["errors", "client cpu"]
    rows = []
    for r in steps:
        first = ([_num(r.target_rate, "g"), _num(r.sent_per_s, ".1f")] if open_loop
                 else [str(r.concurrency)])
        rows.append(first + [
            f"{r.requests_per_s:.1f}", f"{r.inferences_per_s:.1f}", _num(r.p50_ms, ".2f"),
            _num(r.p90_ms, ".2f"), _num(r.p99_ms, ".2f"), _num(r.max_ms, ".2f")]
            + ([str(r.drops)] if open_loop else [])
            + [str(r.errors), f"{r.client_cpu_percent:.0f}%" + ("*" if r.client_saturated else "")])
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = list(header) + [line(cols)] + [line(row) for row in rows]
    out.append("client cpu: this process's CPU time over wall time, 100% = one core "
               "(gRPC's threads included)")
    out += notes(steps)
    return "\n".join(out) + "\n"


def _csv(steps: Sequence[StepResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in steps:
        d = r.as_dict()
        writer.writerow({k: "" if d[k] is None else d[k] for k in _CSV_FIELDS})
    return buf.getvalue()


def _json(steps: Sequence[StepResult], run: dict) -> str:
    return json.dumps({"run": run, "steps": [r.as_dict() for r in steps],
                       "notes": notes(steps)}, indent=2) + "\n"


def render(fmt: str, steps: Sequence[StepResult], run: dict, header: Sequence[str] = ()) -> str:
    if fmt == "csv":
        return _csv(steps)
    if fmt == "json":
        return _json(steps, run)
    return _table(steps, header)


def require_matplotlib() -> None:
    """Fail before the run, not after it, when --plot cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(PLOT_INSTALL_HINT) from e


def plot(path: str, steps: Sequence[StepResult], title: str) -> None:
    """Latency p50/p90/p99 (ms) against throughput (inferences/s), one point per step."""
    require_matplotlib()
    # The Figure API with the Agg canvas, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [r for r in steps if r.requests]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [r.inferences_per_s for r in points]
    for name, marker in (("p50", "o"), ("p90", "s"), ("p99", "^")):
        ax.plot(x, [getattr(r, f"{name}_ms") for r in points], marker=marker, label=name)
    for r in points:
        tag = f"c={r.concurrency}" if r.mode == "concurrency" else f"r={r.target_rate:g}"
        ax.annotate(tag, (r.inferences_per_s, r.p99_ms), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png", dpi=100)
