"""The Grafana dashboard (deploy/grafana/modelserve.json) against a real scrape: a real server on
port 0 serves a batching model with input drift and a tiny generative model, real clients send
inference (some of it failing) and completions, and every series a panel queries, every label it
matches, groups by or names in a legend must be in what ``GET /metrics`` then answers."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
httpx = pytest.importorskip("httpx")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from conftest import LoopThread  # noqa: E402
from modelserve.generation.gpt2 import write_random_checkpoint  # noqa: E402
from modelserve.observe import Observer  # noqa: E402
from modelserve.observe.payload import PayloadLog  # noqa: E402
from test_openai import VOCAB, write_tokenizer  # noqa: E402

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "modelserve.json"

# The areas issue 18 asks the dashboard to cover, each found by a panel title.
AREAS = {
    "request rate": r"request rate",
    "error rate": r"error rate",
    "p50/p99 latency": r"latency p50 / p99",
    "queue depth": r"queue depth",
    "batch size": r"batch size",
    "saturation": r"saturation",
    "instances": r"instances",
    "memory": r"memory",
    "time to first token": r"time to first token",
    "drift": r"drift",
}

# What a dashboard variable stands for when every value is selected (its allValue).
VARIABLES = {"$model": ".*", "$version": ".*"}

# Labels Prometheus attaches to every series it scrapes: a query may name them though /metrics has none.
TARGET_LABELS = {"job", "instance"}

SCORER = """
class Model:
    def execute(self, inputs):
        x = inputs["X"]
        if (x < 0).any():
            raise ValueError("negative input")
        return {"Y": x.sum(axis=1, keepdims=True)}
"""


# --- PromQL, as far as the dashboard writes it ------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<clause>\b(?P<keyword>by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^)]*)\))
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[a-zA-Z_:][\w:]*)\s*(?:\{(?P<matchers>[^}]*)\})?
""", re.X)
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_KEYWORDS = {
    # aggregation operators (written before their "by (...)"), binary and set operators, modifiers
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
}


def parse_matchers(text: str) -> list[tuple[str, str, str]]:
    matchers, pos = [], 0
    while pos < len(text.rstrip()):
        m = _MATCHER.match(text, pos)
        assert m, f"cannot read the label matchers {{{text}}} from position {pos}"
        matchers.append(m.groups())
        pos = m.end()
    return matchers


def parse(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str], set[str]]:
    """The selectors (metric name, label matchers) of a PromQL expression, the labels it aggregates
    by, and the labels its other clauses name (without, on, ignoring, group_left, group_right)."""
    selectors, by, on = [], set(), set()
    for m in _TOKEN.finditer(expr):
        if m["clause"]:
            labels = {label.strip() for label in m["labels"].split(",") if label.strip()}
            (by if m["keyword"] == "by" else on).update(labels)
        elif m["name"]:
            if m["name"] in _KEYWORDS or (m["matchers"] is None and expr[m.end():].lstrip().startswith("(")):
                continue  # an aggregation, an operator or a function call
            selectors.append((m["name"], parse_matchers(m["matchers"] or "")))
    return selectors, by, on


def matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        value = VARIABLES.get(value, value)
        have = labels.get(label, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None, "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def test_the_promql_reader_finds_selectors_matchers_and_grouping():
    expr = ('histogram_quantile(0.99, sum by (model, version, le) (rate(a_bucket{model=~"$model", '
            'outcome!="success"}[$__rate_interval]))) / sum(b_total) + count by (state) (c == 1) '
            '+ d and on (job, instance) e')
    selectors, by, on = parse(expr)
    assert selectors == [("a_bucket", [("model", "=~", "$model"), ("outcome", "!=", "success")]),
                         ("b_total", []), ("c", []), ("d", []), ("e", [])]
    assert by == {"model", "version", "le", "state"} and on == {"job", "instance"}


# --- the dashboard --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel that queries, rows' collapsed panels included."""
    out = []
    for p in dashboard["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def queries(dashboard: dict):
    for p in panels(dashboard):
        for t in p["targets"]:
            yield p, t


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_data_source(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("model", "version"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"]
        assert variables[name]["allValue"] == VARIABLES[f"${name}"]
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_has_a_unique_id_and_its_own_place(dashboard):
    everything = dashboard["panels"] + [c for p in dashboard["panels"] for c in p.get("panels", [])]
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for p in everything:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = p["title"]


def test_every_panel_queries_prometheus_with_named_targets(dashboard):
    for p in panels(dashboard):
        assert p["title"] and p["type"] in {"timeseries", "bargauge", "stat", "table", "gauge"}, p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and "legendFormat" in t, (p["title"], t["refId"])
            assert t.get("datasource", p["datasource"]) == p["datasource"], (p["title"], t["refId"])


def test_the_dashboard_covers_each_area_the_issue_lists(dashboard):
    titles = [p["title"].lower() for p in panels(dashboard)]
    missing = [area for area, pattern in AREAS.items() if not any(re.search(pattern, t) for t in titles)]
    assert not missing, f"no panel for {missing}; titles: {titles}"


def test_drift_panels_are_colored_at_psi_0_1_and_0_25(dashboard):
    psi = [p for p in panels(dashboard) if "modelserve_input_drift_psi" in " ".join(t["expr"] for t in p["targets"])]
    assert psi
    for p in psi:
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, 0.1, 0.25], p["title"]


# --- a real server, real traffic, a real scrape ----------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, records) -> None:
        self.records.extend(records)

    def close(self) -> None:
        pass


def _repository(root: Path) -> Path:
    (root / "scorer" / "1").mkdir(parents=True)
    (root / "scorer" / "1" / "model.py").write_text(textwrap.dedent(SCORER))
    (root / "scorer" / "config.yaml").write_text(textwrap.dedent("""
        backend: python
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [4]}]
        outputs: [{name: Y, datatype: FP32, shape: [1]}]
        dynamic_batching: {max_queue_delay_us: 2000}
        drift: {reference_requests: 20}
    """))
    tiny = root / "tiny" / "1"
    write_random_checkpoint(tiny, vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, seed=3)
    write_tokenizer(tiny)
    (root / "tiny" / "config.yaml").write_text("generation: {max_num_seqs: 4, block_size: 4}\n")
    return root


def _send_traffic(grpc_url: str, http_url: str) -> None:
    rng = np.random.default_rng(18)
    with grpcclient.InferenceServerClient(grpc_url) as client:
        # The drift reference: 20 requests of 2 rows, 40 distinct values a feature (continuous: KS too).
        for _ in range(20):
            x = grpcclient.InferInput("X", [2, 4], "FP32")
            x.set_data_from_numpy(rng.normal(size=(2, 4)).astype(np.float32) + 5)
            client.infer("scorer", [x])
        for _ in range(3):  # the model refuses negative inputs: outcome "internal"
            x = grpcclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(-np.ones((1, 4), np.float32))
            with pytest.raises(Exception, match="negative input"):
                client.infer("scorer", [x])
    with httpclient.InferenceServerClient(http_url.removeprefix("http://")) as client:
        for _ in range(20):  # the window: shifted, so the drift is plain
            x = httpclient.InferInput("X", [2, 4], "FP32")
            x.set_data_from_numpy(rng.normal(size=(2, 4)).astype(np.float32) + 8)
            client.infer("scorer", [x])
    for _ in range(3):
        r = httpx.post(f"{http_url}/v1/completions", timeout=60,
                       json={"model": "tiny", "prompt": "w1 w2 w3", "max_tokens": 6, "ignore_eos": True})
        r.raise_for_status()


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """Every sample of a scrape after the traffic: sample name -> the label sets it has."""
    from modelserve.server.app import Server
    from modelserve.server.common import ServerOptions

    loop = LoopThread("dashboard-test")
    server = Server(_repository(tmp_path_factory.mktemp("repo")),
                    ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0),
                    memory_budget="cpu=8GiB",  # the memory budget panel
                    observer=Observer(payload_log=PayloadLog(ListSink())))  # the payload log panels
    loop.run(server.start())
    try:
        http_url = f"http://127.0.0.1:{server.http_port}"
        _send_traffic(f"127.0.0.1:{server.grpc_port}", http_url)
        text = httpx.get(f"{http_url}/metrics").text
    finally:
        loop.run(server.shutdown())
        loop.close()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s.labels)
    return samples


def test_every_series_a_panel_queries_has_samples_in_a_real_scrape(dashboard, scrape):
    missing = []
    for p, t in queries(dashboard):
        selectors, _, _ = parse(t["expr"])
        assert selectors, (p["title"], t["refId"], t["expr"])
        for name, matchers in selectors:
            if not any(matches(labels, matchers) for labels in scrape.get(name, [])):
                shown = ", ".join(f'{label}{op}"{value}"' for label, op, value in matchers)
                missing.append(f"{p['title']} {t['refId']}: {name}{{{shown}}}")
    assert not missing, "\n".join(missing)


def test_every_label_a_panel_matches_or_groups_by_is_on_its_series(dashboard, scrape):
    wrong = []
    for p, t in queries(dashboard):
        selectors, by, on = parse(t["expr"])
        for name, matchers in selectors:
            present = set().union(*(labels.keys() for labels in scrape.get(name, [])))
            for label in ({m[0] for m in matchers} | by | on) - TARGET_LABELS:
                if label not in present:
                    wrong.append(f"{p['title']} {t['refId']}: {name} has no label {label!r} (it has {sorted(present)})")
    assert not wrong, "\n".join(wrong)


def test_every_label_a_legend_names_survives_the_query(dashboard, scrape):
    wrong = []
    for p, t in queries(dashboard):
        selectors, by, _ = parse(t["expr"])
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t["legendFormat"]):
            if by and label not in by:
                wrong.append(f"{p['title']} {t['refId']}: {label!r} is aggregated away")
            if label in TARGET_LABELS:
                continue
            for name, _ in selectors:
                if not any(label in labels for labels in scrape.get(name, [])):
                    wrong.append(f"{p['title']} {t['refId']}: {name} has no label {label!r}")
    assert not wrong, "\n".join(wrong)


def test_the_model_and_version_variables_list_real_values(dashboard, scrape):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("model", "version"):
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variables[name]["definition"])
        assert m and variables[name]["query"] == variables[name]["definition"], name
        [(metric, matchers)], _, _ = parse(m[1])
        values = {labels.get(m[2]) for labels in scrape.get(metric, []) if matches(labels, matchers)}
        assert m[2] == name
        # Both models are listed: the generative one too, which has no modelserve_requests_total.
        assert values >= ({"scorer", "tiny"} if name == "model" else {"1"}), (name, values)
