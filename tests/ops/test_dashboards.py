"""Every panel query of every dashboard renders against a real Prometheus scraping a real
mesh, and every metric it names exists there: a renamed metric breaks this test.

Set up: the folder's stack (tests/ops/stack.py): 4 node workers, Flower (workers run
with -E), an API reader's counters, nova's hdpbf driver's counters, and a ``prometheus``
process scraping them every second with compose/prometheus.yml's jobs (and one for the
driver); traffic committed, bad messages sent.
Step: wait until Prometheus has scraped every target and holds a series for every
metric any panel names; then run each panel's expression through /api/v1/query (Grafana
variables replaced the way Grafana would).
Check: each query succeeds; each metric name it references has series > 0.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest

from tests.meshkit import wait_until
from tests.services import http_body

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"

# What Grafana substitutes before the query reaches Prometheus.
VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m",
             "${node}": ".+", "$node": ".+", "${datasource}": "prometheus"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan", "atan2"}


def dashboards() -> list[tuple[str, dict]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboards in {DASHBOARDS}"
    return [(f.name, json.loads(f.read_text())) for f in files]


def panels(dash: dict):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])  # rows keep theirs inside


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every target of every panel."""
    out = []
    for fname, dash in dashboards():
        for p in panels(dash):
            for t in p.get("targets", []):
                assert t.get("expr"), f"{fname}: panel {p.get('title')!r} has a target without expr"
                out.append((fname, p["title"], t["expr"]))
    return out


def render(expr: str) -> str:
    for var, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"an unknown Grafana variable is left in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in {...} or by/without/on/ignoring lists) or numbers."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    s = re.sub(r"\{[^}]*\}", " ", s)                                       # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                                      # ranges
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def query(prom: str, expr: str) -> dict:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = http_body(url, timeout=10)
    except Exception as exc:  # 400 for a bad expression: show Prometheus's reason
        detail = getattr(exc, "read", lambda: b"")().decode(errors="replace")
        pytest.fail(f"Prometheus refused {expr!r}: {exc} {detail}")
    return json.loads(body)


def series_count(prom: str, name: str) -> int:
    res = query(prom, f'count({{__name__="{name}"}})')["data"]["result"]
    return int(float(res[0]["value"][1])) if res else 0


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, node) (rate('
                        'hdpbf_commit_latency_seconds_bucket{node=~".+"}[30s])))') == \
        {"hdpbf_commit_latency_seconds_bucket"}
    assert metric_names('sum(up{job="hdpbf-nodes"}) / 1e-9 or vector(0)') == {"up"}
    assert metric_names("max(a_total) - min(b) > 0") == {"a_total", "b"}


def test_every_dashboard_is_grafana_json_with_unique_ids():
    for fname, dash in dashboards():
        assert dash.get("uid") and dash.get("title") and dash.get("schemaVersion"), fname
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), f"{fname}: duplicate panel ids"
        for p in panels(dash):
            assert p.get("targets"), f"{fname}: panel {p['title']!r} has no query"
            assert {"x", "y", "w", "h"} <= set(p.get("gridPos", {})), f"{fname}: {p['title']!r}"


def test_every_panel_query_runs_on_a_real_scrape_of_the_mesh(loaded_stack):
    prom = loaded_stack.prom_url
    queries = panel_queries()
    names = sorted({n for _, _, e in queries for n in metric_names(render(e))})
    titles = {d["title"] for _, d in dashboards()}
    assert any("flower_" in n for n in names) and any("hdpbf_" in n for n in names), titles

    def targets_up():
        active = json.loads(http_body(f"{prom}/api/v1/targets"))["data"]["activeTargets"]
        down = [(t["labels"]["job"], t["scrapeUrl"], t.get("lastError")) for t in active
                if t["health"] != "up"]
        return not down and len(active) == 7, down
    wait_until(lambda: targets_up()[0], 60, lambda: f"every scrape target up: {targets_up()[1]}")

    def all_present():
        return not [n for n in names if series_count(prom, n) == 0]
    wait_until(all_present, 60,
               lambda: "series for every metric the dashboards name; missing: "
                       f"{[n for n in names if series_count(prom, n) == 0]} (renamed or not "
                       f"exported? see pbft_tasks/metrics.py and Flower's /metrics)", interval=0.5)
    # rate() needs traffic between two scrapes: commit updates until Prometheus sees some
    client = loaded_stack.mesh.client(timeout=5.0)
    more = iter(range(10_000))

    def commit_rate():
        client.put(f"ops-rate-{next(more)}", 1, timeout=10)
        return query(prom, "sum(rate(hdpbf_requests_committed_total[30s])) > 0")["data"]["result"]
    wait_until(commit_rate, 60, "a non-zero commit rate in Prometheus", interval=0.2)

    failures = []
    for fname, title, expr in queries:
        rendered = render(expr)
        res = query(prom, rendered)
        if res.get("status") != "success":
            failures.append(f"{fname} / {title}: {rendered}: {res}")
            continue
        for name in metric_names(rendered):
            if series_count(prom, name) == 0:
                failures.append(f"{fname} / {title}: no series for {name} in {rendered}")
    assert not failures, "\n".join(failures)
    assert len(queries) >= 20


def test_height_panel_shows_each_node_at_its_ledger_height(loaded_stack):
    """One panel end to end: what the graph plots is what each ledger holds."""
    prom, mesh = loaded_stack.prom_url, loaded_stack.mesh
    height, _ = mesh.wait_converged(timeout=60)
    (expr,) = [e for f, t, e in panel_queries() if t == "Ledger height per node"]

    def plotted():
        res = query(prom, render(expr))["data"]["result"]
        got = {r["metric"]["node"]: float(r["value"][1]) for r in res}
        return got if got == {str(i): height for i in range(mesh.n)} else None
    wait_until(plotted, 30, f"the height panel to show every node at {height}")
