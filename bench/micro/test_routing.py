"""What a traffic policy adds to a request on the calling thread.

A request to a model without a policy pays one dict lookup (``TrafficManager.active.get``); with
a policy it also pays ``Endpoint.route`` (a weighted pick, or a hash of the sticky key) and
``Routed.finish`` (its outcome and latency into the target's window). No model runs: these are
the manager's own costs, best of 5 rounds. Baseline in the same run: the lookup alone.
"""

from __future__ import annotations

import random
import timeit

from modelserve.traffic import TrafficManager, parse_policy
from modelserve.traffic.manager import Endpoint

ROUNDS = 5


class _NoCatalog:
    """The routing path never reaches the catalog (only shadows and validation do): it fails
    loudly if called."""

    async def infer(self, *args):
        raise AssertionError("the routing path ran a shadow")

    def __getattr__(self, name):
        raise AssertionError(f"the routing path called the catalog's {name}")


def test_routing_cost(tables, bench_seed, bench_duration):
    manager = TrafficManager(_NoCatalog(), clock=lambda: 0.0, tick_interval_s=None)
    split = {"targets": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}
    random_ep = Endpoint(manager, "m", parse_policy(split))
    sticky_ep = Endpoint(manager, "m", parse_policy({**split, "sticky_key": "user_id"}))
    manager.active["m"] = random_ep
    routing = {"user_id": "user-42"}
    cases = {
        "no policy (lookup)": lambda: manager.active.get("other"),
        "random split": lambda: random_ep.route(None).finish(),
        "sticky split": lambda: sticky_ep.route(routing).finish(),
    }
    order = list(cases)
    random.Random(bench_seed).shuffle(order)
    us = {}
    for name in order:
        fn = cases[name]
        calls = max(1000, int(bench_duration / len(cases) / ROUNDS / max(timeit.timeit(fn, number=1000) / 1000, 1e-8)))
        us[name] = min(timeit.repeat(fn, number=calls, repeat=ROUNDS)) / calls * 1e6

    chosen = {sticky_ep.route(routing).target.id for _ in range(100)}
    assert len(chosen) == 1  # a sticky key keeps its target
    table = tables("traffic routing cost per request, calling thread (µs, best of 5)",
                   ["path", "µs", "minus lookup µs"], formats={"µs": ".2f", "minus lookup µs": ".2f"})
    base = us["no policy (lookup)"]
    for name in cases:
        table.row(name).update({"µs": us[name], "minus lookup µs": us[name] - base})
