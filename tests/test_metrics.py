"""Metrics: one recorder (streamer.observe.stats.RunStats) and one Prometheus exporter (streamer.observe.prometheus) for
`streamer run --control-port` and `streamer serve`: the same names and types on both (scraped from the real
commands), valid exposition text, and the --stats JSON made of the same numbers."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

from streamer.observe.prometheus import exposition
from streamer.observe.stats import RunStats
from tests.servers import start_streamer

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, dict]:
    """Prometheus text format 0.0.4, checked: every family declared once (HELP, TYPE) before its samples,
    every sample belongs to a declared family, counters end in ``_total``, histograms have cumulative
    ``_bucket{le=...}`` up to ``+Inf`` equal to ``_count``, and a ``_sum``. -> {name: {"type", "samples"}}."""
    families: dict[str, dict] = {}
    current = None
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in families, f"{name} declared twice"
            families[name] = {"type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == current and families[name]["type"] is None, line
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.group(1), dict(LABEL.findall(match.group(2) or "")), match.group(3)
            float(value)  # a number, or +Inf/NaN spelled as Prometheus does
            family = current
            assert family is not None and families[family]["type"] is not None, f"{line!r} before any TYPE"
            kind = families[family]["type"]
            if kind == "histogram":
                assert name in (f"{family}_bucket", f"{family}_sum", f"{family}_count"), (family, line)
                assert (name == f"{family}_bucket") == ("le" in labels), line
            else:
                assert name == family, f"{line!r} is not a sample of {family}"
            families[family]["samples"].append((name, labels, float(value)))
    for name, family in families.items():
        assert family["type"] is not None, f"{name} has no TYPE"
        if family["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{name} is a {family['type']} named like a counter"
        if family["type"] == "histogram":
            buckets = [(s[1]["le"], s[2]) for s in family["samples"] if s[0].endswith("_bucket")]
            assert buckets and buckets[-1][0] == "+Inf", name
            bounds = [float(le) for le, _ in buckets]
            counts = [count for _, count in buckets]
            assert bounds == sorted(bounds) and counts == sorted(counts), f"{name}: buckets not cumulative"
            total = [s[2] for s in family["samples"] if s[0] == f"{name}_count"]
            assert total == [counts[-1]], f"{name}: _count is not the +Inf bucket"
            assert any(s[0] == f"{name}_sum" for s in family["samples"]), f"{name} has no _sum"
    return families


def value(families: dict[str, dict], name: str, **labels: str) -> float:
    family = next(f for n, f in families.items() if name == n or name.startswith(n + "_") and f["type"] == "histogram")
    found = [v for n, lab, v in family["samples"] if n == name and lab == labels]
    assert len(found) == 1, (name, labels, family["samples"])
    return found[0]


def test_stats_json_and_prometheus_are_the_same_numbers(tmp_path: Path) -> None:
    stats = RunStats()
    for _ in range(5):
        stats.captured()
    stats.dropped_at_capture(2)
    stats.processed(0.001, 0.02)
    stats.batch(2, 0.015)
    stats.sink_written("out.mp4", 0.003, 0.040)
    stats.sink_written("out.mp4", 0.003, None)  # repeated while the source had no signal
    stats.sink_dropped("out.mp4")
    stats.sink_failed("out.mp4")
    stats.failed()
    stats.write_json(tmp_path / "s.json")
    snap = json.loads((tmp_path / "s.json").read_text())
    assert snap["frames_in"] == 5 and snap["frames_out"] == 1 and snap["frame_errors"] == 1
    assert snap["dropped"] == 3 and snap["dropped_at"] == {"capture": 2, "out.mp4": 1}
    assert snap["latency_ms"]["p50"] == pytest.approx(40.0)
    assert "dropped 3" in stats.status_line()

    metrics = parse_exposition(exposition(stats))
    assert value(metrics, "streamer_frames_received_total") == snap["frames_in"]
    assert value(metrics, "streamer_frames_out_total") == snap["frames_out"]
    assert value(metrics, "streamer_frame_errors_total") == snap["frame_errors"]
    assert value(metrics, "streamer_frames_dropped_total", where="capture") == snap["dropped_at"]["capture"]
    assert value(metrics, "streamer_frames_dropped_total", where="sink", sink="out.mp4") == 1
    assert value(metrics, "streamer_sink_frames_written_total", sink="out.mp4") == 2
    assert value(metrics, "streamer_sink_frames_repeated_total", sink="out.mp4") == 1
    assert value(metrics, "streamer_sink_errors_total", sink="out.mp4") == 1
    assert value(metrics, "streamer_latency_seconds_count") == 1
    assert value(metrics, "streamer_latency_seconds_sum") == pytest.approx(0.040)
    assert value(metrics, "streamer_latency_seconds_bucket", le="0.025") == 0
    assert value(metrics, "streamer_latency_seconds_bucket", le="0.05") == 1
    assert value(metrics, "streamer_batch_size_sum") == 2 and value(metrics, "streamer_batch_size_count") == 1
    assert value(metrics, "streamer_model_seconds_sum") == pytest.approx(0.015)
    assert "streamer_sessions" not in metrics  # a serve-only family


def test_a_sink_name_with_quotes_is_escaped_in_labels() -> None:
    stats = RunStats()
    stats.sink_dropped('udp://h:1?a="b"\\c')
    metrics = parse_exposition(exposition(stats))
    assert value(metrics, "streamer_frames_dropped_total", where="sink", sink='udp://h:1?a=\\"b\\"\\\\c') == 1


def test_the_exposition_parser_refuses_what_prometheus_would() -> None:
    for bad in ("# HELP x_total a\n# TYPE x_total counter\ny_total 1\n",  # sample of an undeclared family
                "# HELP x a\n# TYPE x counter\nx 1\n",  # a counter without _total
                "# HELP h a\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"):
        with pytest.raises(AssertionError):
            parse_exposition(bad)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), response.headers
        return response.read().decode()


@pytest.mark.slow
def test_run_and_serve_export_the_same_metric_names_and_types(tmp_path: Path) -> None:
    """Both commands as the user runs them, scraped: every family of `run --control-port` is on `serve` with
    the same type (serve adds its sessions), and the families the issue names are there."""
    port = free_port()
    run = start_streamer(["run", "--source", "testsrc:96x64@10", "--sink", "out.mkv", "--preset", "passthrough",
                          "--control-port", str(port), "--duration", "120"], tmp_path / "run.log",
                         r"control on (http://127\.0\.0\.1:\d+)/params", env={"STREAMER_TOKEN": ""})
    try:
        serve = start_streamer(["serve", "--port", "0", "--preset", "passthrough", "--source", "testsrc:96x64@10"],
                               tmp_path / "serve.log", r"serving on (http://127\.0\.0\.1:\d+)/",
                               env={"STREAMER_TOKEN": ""})
        try:
            run_text, serve_text = _get(f"{run.url}/metrics"), _get(f"{serve.url}/metrics")
        finally:
            assert serve.stop() == 0, serve.text()
    finally:
        assert run.stop() == 128 + 15, run.text()  # stopped by SIGTERM, cleanly
    run_families, serve_families = parse_exposition(run_text), parse_exposition(serve_text)
    run_types = {name: f["type"] for name, f in run_families.items()}
    serve_types = {name: f["type"] for name, f in serve_families.items()}
    assert {n: t for n, t in serve_types.items() if n in run_types} == run_types, (run_types, serve_types)
    assert set(serve_types) - set(run_types) == {"streamer_sessions", "streamer_sessions_started_total"}
    for name, kind in {"streamer_frames_received_total": "counter", "streamer_frames_out_total": "counter",
                       "streamer_frames_dropped_total": "counter", "streamer_reconnects_total": "counter",
                       "streamer_latency_seconds": "histogram", "streamer_batch_size": "histogram",
                       "streamer_model_seconds": "histogram", "streamer_fps": "gauge"}.items():
        assert run_types.get(name) == kind, name
    assert value(serve_families, "streamer_sessions", kind="browser") == 0


def test_serve_counts_a_source_slot_drop_once() -> None:
    """`serve --source` counts a drop of the source's slot as it happens (while someone watches); the
    source's own running count of the same drops is then not added a second time. `run` reads that count."""
    class Source:  # what a threaded source reports: its slot's drops and its reconnects
        dropped, reconnects = 0, 0

    source = Source()
    serve, run = RunStats(), RunStats()
    serve.watch_source(source, drops=False)
    run.watch_source(source)
    watched = serve.stream()
    for _ in range(3):  # the slot replaced three frames: the source counts them, serve's callback too
        source.dropped += 1
        watched.frame_dropped()
    source.reconnects = 1
    assert serve.snapshot()["dropped"] == 3 and serve.snapshot()["reconnects"] == 1
    assert 'streamer_frames_dropped_total{where="capture"} 3\n' in exposition(serve)
    assert "source" not in serve.snapshot()["dropped_at"]
    assert run.snapshot()["dropped_at"]["source"] == 3
