"""``modelserve traffic ...`` and ``modelserve rollout ...``: traffic management of a running
server, over its HTTP routes (server/traffic_http.py), with nothing but the standard library.

::

    modelserve traffic set recommender stable=90 2=10 --sticky-key user_id
    modelserve traffic readout recommender
    modelserve rollout start recommender --candidate 2 --steps 5,25,50,100 --interval 60
    modelserve rollout status recommender

Every command takes ``--url``, ``--actor``, ``--token-file`` and ``--timeout``
(modelserve/_admin_client.py). Exit status 0 on success, 1 when the server refused (its error is
printed) or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from .._admin_client import Refused, add_connection_options, call as _call
from ..errors import ModelserveError
from .policy import parse_target

__all__ = ["add_parsers"]


def _load_file(path: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise OSError(f"--file {path}: {e.strerror or e}") from None
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def _pairs(items: list[str], what: str) -> list[tuple[dict[str, Any], int]]:
    out = []
    for item in items:
        target, sep, number = item.rpartition("=")
        if not sep or not number.isdigit():
            raise Refused(f"{what} {item!r}: expected TARGET=PERCENT, e.g. stable=90 or other:3=10")
        out.append((parse_target(target), int(number)))
    return out


def _model_path(args: argparse.Namespace, *rest: str) -> str:
    return "/v2/models/" + urllib.parse.quote(args.model, safe="") + "".join("/" + r for r in rest)


def _print(value: Any) -> None:
    print(json.dumps(value))


# --- traffic ----------------------------------------------------------------------------------


def _traffic(args: argparse.Namespace) -> Any:
    if args.action == "get":
        return _call(args, "GET", _model_path(args, "traffic"))
    if args.action == "set":
        if args.file:
            policy = _load_file(args.file)
        else:
            if not args.targets:
                raise Refused("traffic set: give TARGET=WEIGHT pairs (e.g. stable=90 2=10) or --file")
            policy = {"targets": [{**t, "weight": w} for t, w in _pairs(args.targets, "target")]}
            if args.sticky_key:
                policy["sticky_key"] = args.sticky_key
            if args.baseline:
                policy["baseline"] = args.baseline
            if args.shadow:
                policy["shadows"] = [{**t, "percent": p} for t, p in _pairs(args.shadow, "shadow")]
        return _call(args, "PUT", _model_path(args, "traffic"), policy)
    if args.action == "clear":
        return _call(args, "DELETE", _model_path(args, "traffic"))
    if args.action == "readout":
        query = f"?window_s={args.window}" if args.window else ""
        readout = _call(args, "GET", _model_path(args, "traffic", "readout") + query)
        if args.json:
            return readout
        print(format_readout(readout))
        return None
    if args.action == "audit":
        path = _model_path(args, "traffic", "audit") if args.model else "/v2/traffic/audit"
        entries = _call(args, "GET", f"{path}?limit={args.limit}")["entries"]
        for e in entries:
            print(json.dumps(e))
        return None
    raise AssertionError(args.action)


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def _ci(d: dict[str, Any] | None, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    if not d:
        return "-"
    lo, hi = d["ci95"]
    mark = " *" if d["significant"] else ""
    return f"{d['diff'] * scale:+.{digits}f}{unit} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]{mark}"


def format_readout(r: dict[str, Any]) -> str:
    """The readout as a table (``--json`` prints it whole)."""
    lines = [f"endpoint {r['endpoint']}  baseline {r['baseline']}"
             + (f"  window {r['window_s']:g} s" if r.get("window_s") else "")
             + (f"  sticky on '{r['sticky_key']}'" if r.get("sticky_key") else "")]
    header = f"{'target':<16}{'weight':>7}{'requests':>10}{'errors':>8}{'err rate':>10}{'p50 ms':>9}{'p99 ms':>9}" \
             f"  {'err rate vs baseline (95% CI)':<34}{'p50 vs baseline ms (95% CI)'}"
    lines.append(header)
    for t in r["targets"]:
        vs = t.get("vs_baseline") or {}
        lines.append(
            f"{t['target']:<16}{t['weight']:>6}%{t['requests']:>10}{t['errors']:>8}"
            f"{_fmt(None if t['error_rate'] is None else t['error_rate'] * 100, '%', 1):>10}"
            f"{_fmt(t['p50_ms']):>9}{_fmt(t['p99_ms']):>9}  "
            f"{('(baseline)' if t['baseline'] else _ci(vs.get('error_rate'), 100, ' pp', 1)):<34}"
            f"{'' if t['baseline'] else _ci((vs.get('latency') or {}).get('p50_ms'))}"
        )
    for s in r.get("shadows", []):
        c = s["comparison"]
        lines.append(
            f"shadow {s['target']}: {s['requests']} requests, {s['errors']} errors, {c['dropped']} dropped; "
            f"agreement {_fmt(None if c['agreement_rate'] is None else c['agreement_rate'] * 100, '%', 1)}, "
            f"mean |diff| {_fmt(c['mean_abs_diff'], '', 4)}, max |diff| {_fmt(c['max_abs_diff'], '', 4)}"
        )
    ro = r.get("rollout")
    if ro:
        lines.append(f"rollout of {ro['candidate']}: {ro['state']} at {ro['weight']}% (steps {ro['steps']})")
    lines.append("* = the 95% interval excludes 0")
    return "\n".join(lines)


# --- rollout ----------------------------------------------------------------------------------


def _gate(g: dict[str, Any]) -> str:
    if g["verdict"] == "wait":
        return f"{g['gate']} wait ({g['candidate_requests']}/{g['baseline_requests']} requests of {g['min_requests']})"
    if g["gate"] == "error_rate":
        return (f"error_rate {g['verdict']} (candidate {g['candidate'] * 100:.1f}%, baseline "
                f"{g['baseline'] * 100:.1f}%, limit {g['limit'] * 100:.1f}%)")
    if g["gate"] == "p99_latency":
        return (f"p99_latency {g['verdict']} (candidate {g['candidate_ms']:.2f} ms, baseline "
                f"{g['baseline_ms']:.2f} ms, limit {g['limit_ms']:.2f} ms)")
    return (f"divergence {g['verdict']} (disagreement {_fmt(g['disagreement'], '', 3)}, limit "
            f"{g['max_disagreement']}; mean |diff| {_fmt(g['mean_abs_diff'], '', 4)})")


def format_rollout(r: dict[str, Any]) -> str:
    """A rollout's state, gates and history (``--json`` prints it whole)."""
    lines = [f"rollout of {r['candidate']} against {r['baseline']} on {r['endpoint']}: {r['state']} at "
             f"{r['weight']}% (steps {', '.join(map(str, r['steps']))})"]
    for g in r.get("gates") or []:
        lines.append("  gate " + _gate(g))
    for h in r.get("history") or []:
        by = f" by {h['actor']}" if h.get("actor") else ""
        why = f": {h['gate']} failed" if h.get("gate") else ""
        lines.append(f"  {h['time']}  {h['event']:<12} {h['weight']:>3}%{by}{why}")
    return "\n".join(lines)


def _show_rollout(args: argparse.Namespace, status: Any) -> Any:
    if args.json:
        return status
    print(format_rollout(status))
    return None


def _rollout(args: argparse.Namespace) -> Any:
    if args.action == "status":
        return _show_rollout(args, _call(args, "GET", _model_path(args, "rollout")))
    if args.action in ("pause", "resume", "promote", "abort"):
        return _show_rollout(args, _call(args, "POST", _model_path(args, "rollout", args.action)))
    if args.file:
        spec = _load_file(args.file)
    else:
        if not args.candidate:
            raise Refused("rollout start: give --candidate (e.g. --candidate 2) or --file")
        spec = {"candidate": parse_target(args.candidate)}
        if args.baseline:
            spec["baseline"] = parse_target(args.baseline)
        if args.steps:
            try:
                spec["steps"] = [int(s) for s in args.steps.split(",")]
            except ValueError:
                raise Refused(f"--steps {args.steps!r}: expected percentages separated by commas, e.g. 5,25,50,100") from None
        for key, value in (("step_interval_s", args.interval), ("window_s", args.window),
                           ("min_requests", args.min_requests)):
            if value is not None:
                spec[key] = value
        gates: dict[str, Any] = {}
        if args.max_error_increase is not None:
            gates["error_rate"] = {"margin": args.max_error_increase}
        if args.latency_margin is not None or args.latency_slack_ms is not None:
            gates["p99_latency"] = {k: v for k, v in (("margin", args.latency_margin),
                                                      ("slack_ms", args.latency_slack_ms)) if v is not None}
        if args.max_disagreement is not None or args.max_mean_abs_diff is not None:
            gates["divergence"] = {k: v for k, v in (("max_disagreement", args.max_disagreement),
                                                     ("max_mean_abs_diff", args.max_mean_abs_diff),
                                                     ("shadow_percent", args.divergence_shadow_percent)) if v is not None}
        if gates:
            spec["gates"] = gates
    return _show_rollout(args, _call(args, "POST", _model_path(args, "rollout"), spec))


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result = handler(args)
        except (Refused, ModelserveError) as e:
            print(f"modelserve {args.command} {args.action}: {e}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as e:  # --file, --token-file
            print(f"modelserve {args.command} {args.action}: {e}", file=sys.stderr)
            return 1
        if result is not None:
            _print(result)
        return 0

    return run


def add_parsers(sub: Any) -> None:
    """Registers ``traffic`` and ``rollout`` under the ``modelserve`` command."""
    t = sub.add_parser("traffic", help="traffic policy, A/B readout and audit log of a running server's model")
    ts = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("get", "show the policy"), ("clear", "remove the policy (the default version serves)")):
        p = ts.add_parser(name, help=text)
        p.add_argument("model")
        add_connection_options(p, actor=True)
    p = ts.add_parser("set", help="set the policy: TARGET=WEIGHT pairs (stable=90 2=10 other:3=0) or --file")
    p.add_argument("model")
    p.add_argument("targets", nargs="*", metavar="TARGET=WEIGHT")
    p.add_argument("--sticky-key", help="request parameter or header whose value keeps a caller on one target")
    p.add_argument("--baseline", help="the target the readout compares against (default: the first)")
    p.add_argument("--shadow", action="append", default=[], metavar="TARGET=PERCENT", help="mirror traffic to TARGET")
    p.add_argument("--file", help="the policy as JSON or YAML instead")
    add_connection_options(p, actor=True)
    p = ts.add_parser("readout", help="per target requests, error rate, latency, and differences with 95%% CIs")
    p.add_argument("model")
    p.add_argument("--window", type=float, metavar="SECONDS", help="only the last SECONDS (default: every kept sample)")
    p.add_argument("--json", action="store_true", help="print the whole readout as JSON")
    add_connection_options(p, actor=True)
    p = ts.add_parser("audit", help="the audit log (of MODEL, or of every model)")
    p.add_argument("model", nargs="?")
    p.add_argument("--limit", type=int, default=100)
    add_connection_options(p, actor=True)
    t.set_defaults(run=_run(_traffic))

    r = sub.add_parser("rollout", help="canary rollouts of a running server's model")
    rs = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rs.add_parser("start", help="start a canary rollout of --candidate")
    p.add_argument("model")
    p.add_argument("--candidate", metavar="TARGET", help="version, label or other:version to roll out")
    p.add_argument("--baseline", metavar="TARGET", help="default: label 'stable' if the model has one, else the default version")
    p.add_argument("--steps", metavar="P,P,...", help="candidate weights in percent, ending at 100 (default 5,25,50,100)")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="least time at each step (default 60)")
    p.add_argument("--window", type=float, metavar="SECONDS", help="the gates' sliding window (default 60)")
    p.add_argument("--min-requests", type=int, metavar="N", help="requests a side before a verdict (default 50)")
    p.add_argument("--max-error-increase", type=float, metavar="F", help="error-rate gate margin, a fraction (default 0.02)")
    p.add_argument("--latency-margin", type=float, metavar="F", help="p99 gate: allowed relative increase (default 0.5)")
    p.add_argument("--latency-slack-ms", type=float, metavar="MS", help="p99 gate: allowed absolute increase (default 5)")
    p.add_argument("--max-disagreement", type=float, metavar="F", help="enable the divergence gate (class outputs)")
    p.add_argument("--max-mean-abs-diff", type=float, metavar="F", help="enable the divergence gate (number outputs)")
    p.add_argument("--divergence-shadow-percent", type=int, metavar="P", help="mirrored share for the divergence gate")
    p.add_argument("--file", help="the rollout spec as JSON or YAML instead")
    p.add_argument("--json", action="store_true", help="print the whole rollout as JSON")
    add_connection_options(p, actor=True)
    for name, text in (("status", "the current or last rollout"), ("pause", "hold at the current step"),
                       ("resume", "continue"), ("promote", "promote the candidate now"),
                       ("abort", "end it and restore the previous policy")):
        p = rs.add_parser(name, help=text)
        p.add_argument("model")
        p.add_argument("--json", action="store_true", help="print the whole rollout as JSON")
        add_connection_options(p, actor=True)
    r.set_defaults(run=_run(_rollout))
