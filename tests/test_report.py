"""report: the HTML page shows what the Landscape holds — graph, counts, batches, reasons —
and never lets the Landscape's data become markup."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser

import pytest
import yaml
from conftest import QUICKSTART, REPO, retarget
from resume_helpers import cli
from sqlalchemy import func, select

from elspeth_beam import testing
from elspeth_beam.landscape import schema as s
from elspeth_beam.inspect.report import build_report
from elspeth_beam.inspect.report_model import EdgeReport, NodeReport
from elspeth_beam.inspect.summary import display_url as public_url
from elspeth_beam.inspect.report_graph import graph_svg
from elspeth_beam.inspect.report_html import render_html
from elspeth_beam.landscape.store import LandscapeStore

SCRIPT = "<script>alert(1)</script>"
SVG_NS = "{http://www.w3.org/2000/svg}"


class _Tables(HTMLParser):
    """Every <table> of a page as {first header: [row cells as text]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._head: list[str] = []
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        if tag == "table":
            self._head, self._rows = [], []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        if tag in ("td", "th") and self._cell is not None and self._rows is not None:
            text = " ".join("".join(self._cell).split())
            (self._head if tag == "th" else self._rows[-1]).append(text)
            self._cell = None
        elif tag == "table" and self._rows is not None:
            self.tables[self._head[0]] = [r for r in self._rows if r]
            self._rows = None

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def _svg(page: str) -> ET.Element:
    return ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))


def _num(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart run, on orders.csv plus one row whose bad quantity is a script tag."""
    tmp = tmp_path_factory.mktemp("report-qs")
    orders = tmp / "orders.csv"
    shutil.copy(REPO / "pipelines" / "data" / "orders.csv", orders)
    with orders.open("a") as handle:
        handle.write(f"99999,Mallory,north,widget,{SCRIPT},1.5,0,2026-01-01\n")
    settings = retarget(yaml.safe_load(QUICKSTART.read_text()), tmp / "out")
    settings["source"]["options"]["path"] = str(orders)
    run = testing.run_for_test(settings, tmp)
    testing.assert_audit_complete(run)
    report = build_report(run.store, run.run_id)
    return run, report, render_html(report), tmp


@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-acc")
    settings = retarget(yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text()), tmp / "out")
    run = testing.run_for_test(settings, tmp)
    testing.assert_audit_complete(run)
    report = build_report(run.store, run.run_id)
    return run, report, render_html(report)


def _db(run, stmt):  # type: ignore[no-untyped-def]
    with run.store.engine.connect() as conn:
        return conn.execute(stmt).all()


def test_page_is_self_contained(quickstart):
    _, _, page, _ = quickstart
    assert page.startswith("<!DOCTYPE html>")
    # nothing fetched: no external URL in any src/href/url(), no link or script element at all
    assert not re.search(r"""(src|href)\s*=|url\(\s*['"]?(https?:|//)|@import|<link\b|<script\b""", page, re.I)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_svg_has_a_group_per_node_and_per_edge(quickstart):
    run, _, page, _ = quickstart
    svg = _svg(page)
    nodes = {r.node_id: r.name for r in _db(run, select(s.nodes).where(s.nodes.c.run_id == run.run_id))}
    edges = {(r.from_node, r.to_node, r.label) for r in _db(run, select(s.edges).where(s.edges.c.run_id == run.run_id))}
    groups = svg.iter(f"{SVG_NS}g")
    drawn_nodes, drawn_edges = [], []
    for g in groups:
        classes = g.get("class", "").split()
        if "node" in classes:
            drawn_nodes.append(g.get("data-node-id"))
        elif "edge" in classes:
            drawn_edges.append((g.get("data-from"), g.get("data-to"), g.get("data-label")))
            assert g.find(f"{SVG_NS}path") is not None
    assert sorted(drawn_nodes) == sorted(nodes) and len(nodes) == 9
    assert sorted(drawn_edges) == sorted(edges) and len(edges) == 12
    texts = [t.text for t in svg.iter(f"{SVG_NS}text")]
    for name in nodes.values():
        assert name in texts
    # the gate's routes are labelled on the drawing: true twice (the fork), false once
    assert Counter(t.text for t in svg.iter(f"{SVG_NS}text") if t.get("class") == "route") == {"true": 2, "false": 1}


def test_svg_layout_runs_left_to_right_with_sinks_last(quickstart):
    _, _, page, _ = quickstart
    x = {}
    for g in _svg(page).iter(f"{SVG_NS}g"):
        if "node" in g.get("class", "").split():
            x[g.get("data-node-id")] = float(g.find(f"{SVG_NS}rect").get("x"))
    chain = ["source:source", "transform:tidy", "transform:pricing", "gate:size", "transform:label_region"]
    assert [x[n] for n in chain] == sorted(x[n] for n in chain) and len({x[n] for n in chain}) == 5
    sinks = [n for n in x if n.startswith("sink:")]
    assert len({x[n] for n in sinks}) == 1 and x[sinks[0]] > max(x[n] for n in chain)


def test_node_counts_match_the_landscape(quickstart):
    run, report, page, _ = quickstart
    rows = {r[0]: r for r in _tables(page)["node"]}
    ns = s.node_states
    per_status = Counter({(n, st): c for n, st, c in _db(run, select(ns.c.node_id, ns.c.status, func.count()).where(ns.c.run_id == run.run_id).group_by(ns.c.node_id, ns.c.status))})
    for node in report.nodes:
        cells = next(v for k, v in rows.items() if k.split()[0] == node.name)
        assert _num(cells[4]) == per_status[(node.node_id, "completed")], node.name
        assert _num(cells[5]) == per_status[(node.node_id, "failed")], node.name
    # source: rows read → rows parsed; 7 bad source records, 6 failing at parse (one of them ours)
    source = rows["source source:source"]
    assert (_num(source[2]), _num(source[3]), _num(source[5])) == (301, 294, 7)
    # gate: 292 tokens in, each large one forked to two sinks
    large = _db(run, select(func.count()).select_from(s.token_outcomes).where(s.token_outcomes.c.run_id == run.run_id, s.token_outcomes.c.sink_name == "large"))[0][0]
    gate = rows["size gate:size"]
    assert _num(gate[2]) == 292 and _num(gate[3]) == 292 + large
    for sink, cells in rows.items():
        if sink.endswith(f"sink:{sink.split()[0]}"):
            written = _db(run, select(func.count()).select_from(s.token_outcomes).where(s.token_outcomes.c.run_id == run.run_id, s.token_outcomes.c.sink_name == sink.split()[0]))[0][0]
            assert _num(cells[3]) == written


def test_durations_match_the_landscape(quickstart):
    run, report, _, _ = quickstart
    ns = s.node_states
    for node in report.nodes:
        durations = sorted(d for (d,) in _db(run, select(ns.c.duration_ms).where(ns.c.run_id == run.run_id, ns.c.node_id == node.node_id)))
        if node.node_type != "sink":  # a sink's total counts each part once: the next test
            assert node.total_ms == pytest.approx(sum(durations))
        assert node.mean_ms == pytest.approx(sum(durations) / len(durations))
        assert node.p95_ms == durations[math.ceil(0.95 * len(durations)) - 1]
        assert min(durations) <= node.mean_ms <= max(durations)


def test_a_sink_part_is_timed_once(quickstart):
    """Each row of a part records the whole part's write: a sink's total time is the sum of its
    parts' write times, not of its rows' (which counted a part once per row)."""
    run, report, _, _ = quickstart
    ns, o = s.node_states, s.token_outcomes
    per_part: dict[tuple[str, str], set[float]] = {}
    for node_id, artifact_id, ms in _db(run, select(ns.c.node_id, o.c.artifact_id, ns.c.duration_ms)
                                        .join(o, (o.c.token_id == ns.c.token_id) & (o.c.node_id == ns.c.node_id))
                                        .where(ns.c.run_id == run.run_id, o.c.artifact_id.is_not(None))):
        per_part.setdefault((node_id, artifact_id), set()).add(ms)
    assert all(len(times) == 1 for times in per_part.values())  # a part's rows share its write time
    sinks = [n for n in report.nodes if n.node_type == "sink"]
    for sink in sinks:
        parts = [next(iter(times)) for (node_id, _), times in per_part.items() if node_id == sink.node_id]
        assert sink.total_ms == pytest.approx(sum(parts)), sink.name
    assert any(sink.completed > len([p for p in per_part if p[0] == sink.node_id]) for sink in sinks)  # parts of several rows
    assert sum(sink.total_ms for sink in sinks) / 1000 <= report.header.duration_s


def test_step_errors_and_failed_outcomes_are_named_apart(quickstart):
    """A node_state that raised is "errored"; "failed" is only ever the token outcome."""
    run, report, page, _ = quickstart
    source = report.node("source:source")
    assert source.errored == 7 and report.outcomes.get("failed", 0) == 0
    svg_texts = [t.text or "" for t in _svg(page).iter(f"{SVG_NS}text")]
    assert "7 errored" in svg_texts and not any("failed" in text for text in svg_texts)
    header = re.search(r"<table><thead><tr>(.*?)</tr>", page).group(1)
    assert ">errored<" in header and "failed" not in header
    cards = {k: v for v, k in re.findall(r'<div class="v">([^<]*)</div><div class="k">([^<]*)</div>', page)}
    assert cards["failed"] == "0" and "errored" not in cards
    from elspeth_beam.inspect.show import render_text, show_run
    text = render_text(show_run(run.store, run.run_id))
    nodes_header = next(line for line in text.splitlines() if line.lstrip().startswith("node "))
    assert "errored" in nodes_header.split() and "failed" not in nodes_header
    assert "failed     0" in run.result.text() and "errored" not in run.result.text()
    from elspeth_beam.inspect.explain import explain_row
    from elspeth_beam.inspect.explain import render_text as explain_text
    nan_price = explain_text(explain_row(run.store, run.run_id, row_index=17)).splitlines()
    state = next(line for line in nan_price if line.lstrip().startswith("source:source"))
    assert state.split()[1] == "errored" and any("outcome: QUARANTINED" in line for line in nan_price)


def test_header_and_sinks(quickstart):
    run, report, page, _ = quickstart
    assert run.run_id in page and "settings hash" in page
    stored = run.store.run(run.run_id)
    assert html.escape(stored["settings_hash"]) in page and stored["status"] == "completed"
    assert report.header.landscape_url == run.store.url
    sinks = {r[0]: r for r in _tables(page)["sink"]}
    summary = run.result.summary["rows_per_sink"]
    assert {name: _num(r[2]) for name, r in sinks.items()} == summary
    assert run.result.summary["quarantined"] == 9  # the quickstart's 8 and our script row
    assert sinks["rejects"][3] == "quarantined 9"
    for art in run.store.table_rows(s.artifacts, run.run_id):
        if art["artifact_kind"] != "part":
            assert html.escape(art["path"]) in page


def test_quarantine_reasons_are_listed_by_cause_and_escaped(quickstart):
    run, report, page, _ = quickstart
    messages = Counter(
        json.loads(e)["message"]
        for (e,) in _db(run, select(s.token_outcomes.c.error_json).where(s.token_outcomes.c.run_id == run.run_id, s.token_outcomes.c.error_json.is_not(None)))
    )
    assert len(messages) == 8 and sum(messages.values()) == 9
    reasons = _tables(page)["tokens"]
    # 8 messages, 6 causes: our bad quantity joins 'three', the two malformed lines are one
    assert {r[5]: _num(r[0]) for r in reasons} == {
        "\"round(row['discount'] / row['quantity'], 2)\": ZeroDivisionError: float division by zero": 2,
        "field 'quantity': cannot coerce <value> to int": 2,
        "malformed CSV line: expected <value> fields, got <value>": 2,
        "field 'order_date': cannot coerce <value> to date": 1,
        "field 'unit_price' is empty but declared float (use float? to allow empty)": 1,
        "field 'unit_price': cannot coerce <value> to float": 1,
    }
    zero = next(r for r in reasons if "ZeroDivisionError" in r[5])
    assert zero[:5] == ["2", "quarantined", "pricing", "rejects", "ExpressionError"] and zero[6] == "–"
    quantity = next(r for r in reasons if "'quantity': cannot coerce" in r[5])
    assert quantity[6] == f"e.g. {SCRIPT!r}, 'three'"
    # our script tag reached the page as text, never as markup
    assert html.escape(repr(SCRIPT)) in page
    assert SCRIPT not in page and "<script" not in page
    assert "9 tokens were set aside with an error, for 6 distinct reasons" in page


def test_top_limits_the_reasons(quickstart):
    run, _, _, _ = quickstart
    report = build_report(run.store, run.run_id, top_reasons=3)
    assert [r.count for r in report.reasons] == [2, 2, 2] and report.reasons_distinct == 6
    assert "the 3 most frequent are shown (6 tokens)" in render_html(report)


def test_accounts_batches(accounts):
    run, report, page = accounts
    b = s.batches
    expected = {}
    for node_id, trigger, n in _db(run, select(b.c.aggregation_node_id, b.c.trigger_type, func.count()).where(b.c.run_id == run.run_id).group_by(b.c.aggregation_node_id, b.c.trigger_type)):
        expected.setdefault(node_id.split(":", 1)[1], {})[trigger] = n
    members = dict(
        _db(run, select(b.c.aggregation_node_id, func.count()).select_from(s.batch_members.join(b, b.c.batch_id == s.batch_members.c.batch_id)).where(b.c.run_id == run.run_id).group_by(b.c.aggregation_node_id))
    )
    rows = {r[0]: r for r in _tables(page)["aggregation"]}
    assert set(rows) == {"dedupe_resent", "account_totals"} == set(expected)
    for name, cells in rows.items():
        triggers = expected[name]
        assert set(triggers) == {"count", "end_of_source"}
        assert cells[2] == " ".join(f"{t} {n}" for t, n in sorted(triggers.items()))
        assert _num(cells[1]) == sum(triggers.values())
        assert cells[3] == f"completed {sum(triggers.values())}"
        assert cells[4] == f"{members[f'aggregation:{name}'] / sum(triggers.values()):.1f}"
    totals = next(x for x in report.batches if x.name == "account_totals")
    assert totals.max_size == 25 and totals.outputs == run.result.summary["rows_per_sink"]["totals"]
    # an aggregation's tokens in/out are its batch members and its flushes' outputs
    node = report.node("aggregation:account_totals")
    assert node.tokens_in == members["aggregation:account_totals"] and node.tokens_out == totals.outputs
    assert f"{report.header.rows_read:,}" in page and "batches" in page


def test_a_run_that_has_only_begun(quickstart, tmp_path):
    """A run still `running` with nothing recorded yet: zeros and dashes, no errors."""
    run, _, _, _ = quickstart
    strip = lambda rows: [{k: v for k, v in r.items() if k != "run_id"} for r in rows]  # noqa: E731
    store = LandscapeStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    store.begin_run(
        run_id="just-started", settings_json="{}", settings_hash="0" * 64, runner="DirectRunner", beam_options={},
        nodes=strip(run.store.table_rows(s.nodes, run.run_id)), edges=strip(run.store.table_rows(s.edges, run.run_id)),
    )
    report = build_report(store, "just-started")
    assert report.header.status == "running" and report.header.completed_at is None and report.header.duration_s is None
    assert all(n.tokens_in == n.tokens_out == n.completed == 0 and n.mean_ms is None and n.p95_ms is None for n in report.nodes)
    page = render_html(report)
    assert len(_tables(page)["node"]) == 9 and '<span class="badge running">running</span>' in page
    assert "No token was quarantined or failed in this run." in page


def test_graph_escapes_names_and_labels():
    node = lambda i, name, kind: NodeReport(  # noqa: E731
        node_id=f"{kind}:{name}", name=name, plugin="p<b>", node_type=kind, position=i, tokens_in=1, tokens_out=1,
        completed=1, errored=0, open=0, mean_ms=1.0, p95_ms=1.0, total_ms=1.0,
    )
    nodes = [node(0, "a<&>\"'", "source"), node(1, "g", "gate"), node(2, "</svg>", "sink")]
    edges = [
        EdgeReport(from_node=nodes[0].node_id, to_node="gate:g", label="on_success"),
        EdgeReport(from_node="gate:g", to_node=nodes[2].node_id, label="<i>x</i>"),
        EdgeReport(from_node=nodes[0].node_id, to_node=nodes[2].node_id, label="on_error"),
    ]
    svg = ET.fromstring(graph_svg(nodes, edges))  # well-formed: nothing broke out of its element
    assert [t.text for t in svg.iter(f"{SVG_NS}text") if t.get("class") == "name"] == ["a<&>\"'", "g", "</svg>"]
    assert [t.text for t in svg.iter(f"{SVG_NS}text") if t.get("class") == "route"] == ["<i>x</i>"]
    assert len([g for g in svg.iter(f"{SVG_NS}g") if g.get("class", "").startswith("edge")]) == 3


def test_public_url_hides_the_password():
    assert public_url("postgresql+psycopg://audit:s3cret@db.internal/elspeth") == "postgresql+psycopg://audit:***@db.internal/elspeth"
    assert public_url("sqlite:///runs/landscape.db") == "sqlite:///runs/landscape.db"


def test_cli_writes_the_latest_run(quickstart, tmp_path):
    run, _, _, tmp = quickstart
    db = str(tmp / "landscape.db")
    out = tmp_path / "nested" / "report.html"
    done = cli("report", "--landscape-url", db, "--out", str(out))
    assert done.code == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out} (") and f"run {run.run_id} [completed], 9 nodes, 301 rows read" in done.stdout
    page = out.read_text()
    assert run.run_id in page and html.escape(SCRIPT) in page


def test_cli_user_mistakes_exit_2(quickstart, tmp_path):
    _, _, _, tmp = quickstart
    db = str(tmp / "landscape.db")
    unknown = cli("report", "no-such-run", "-l", db, "--out", str(tmp_path / "r.html"))
    assert unknown.code == 2 and "'no-such-run' is not in the Landscape" in unknown.stderr and "Traceback" not in unknown.stderr
    into_dir = cli("report", "-l", db, "--out", str(tmp_path))
    assert into_dir.code == 2 and "cannot write the report to" in into_dir.stderr and "Traceback" not in into_dir.stderr
    missing = cli("report", "-l", str(tmp_path / "none.db"))
    assert missing.code == 2 and "no Landscape database" in missing.stderr


@pytest.mark.postgres
def test_same_figures_on_postgresql(accounts, postgres_url, tmp_path):
    """The report's grouped queries give PostgreSQL's answers equal to SQLite's."""
    run, report, _ = accounts
    settings = retarget(yaml.safe_load((REPO / "pipelines" / "accounts.yaml").read_text()), tmp_path / "out")
    pg = testing.run_for_test(settings, tmp_path, landscape=postgres_url)
    pg_report = build_report(pg.store, pg.run_id)

    def figures(r):  # type: ignore[no-untyped-def]
        return (
            r.header.rows_read,
            [(n.node_id, n.tokens_in, n.tokens_out, n.completed, n.errored, n.open, n.p95_ms is None) for n in r.nodes],
            [b.model_dump(exclude={"mean_size"}) for b in r.batches],
            [(x.name, x.by_outcome, len(x.artifacts)) for x in r.sinks],
            r.outcomes,
            [x.model_dump() for x in r.reasons],
        )

    assert figures(pg_report) == figures(report)
    assert [b.mean_size for b in pg_report.batches] == pytest.approx([b.mean_size for b in report.batches])
    assert pg.run_id in render_html(pg_report)
