"""``cachecow counters`` without a server: its reading of the text format (checked against
prometheus_client's own parsers, escapes and OpenMetrics included), the percentiles estimated
from buckets, pages from files and standard input, and the errors of each (exit 2)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from cachecow import CacheCow
from cachecow._counters import _duration, collect, parse_samples, quantile
from cachecow.cli import main
from cachecow.exporters.prometheus import PrometheusCollector
from cachecow.metrics import BUCKETS

INF = math.inf
MODEL = "shop.models.User"


class Offline(CacheCow):
    """A cache that never reaches Redis: its counters are incremented by hand."""

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        raise AssertionError("not called")


def cache_with(counts: dict[str, dict[str, int]], durations: dict[str, list[float]]) -> Offline:
    cache = Offline(redis.Redis(port=1))
    for model, named in counts.items():
        for name, amount in named.items():
            cache.metrics.incr(name, amount, model)
    for model, seconds in durations.items():
        for each in seconds:
            cache.metrics.observe("get", model, each)
    return cache


def page(caches: dict[str, CacheCow], *, open_metrics: bool = False, ns: str = "cachecow") -> str:
    registry = CollectorRegistry()
    PrometheusCollector(caches, registry=registry, namespace=ns)
    generate = openmetrics.generate_latest if open_metrics else generate_latest
    return generate(registry).decode()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["counters", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def as_set(samples: Any) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    return {(s.name, frozenset(s.labels.items()), s.value) for s in samples}


@pytest.mark.parametrize("open_metrics", [False, True], ids=["prometheus", "openmetrics"])
def test_samples_read_as_prometheus_client_reads_them(open_metrics: bool) -> None:
    """Cache names with every character the format escapes, or that ends a label set."""
    caches: dict[str, CacheCow] = {
        'quote " and backslash \\ and, brace}': cache_with({MODEL: {"hits": 3}}, {}),
        "new\nline": cache_with({"": {"invalidations": 2}}, {MODEL: [0.0003, 0.02]}),
    }
    text = page(caches, open_metrics=open_metrics)
    parse = openmetrics_families if open_metrics else text_string_to_metric_families
    theirs = as_set(s for f in parse(text) for s in f.samples if s.name.startswith("cachecow_"))
    mine, present = parse_samples(text)
    assert present
    assert as_set(mine) == theirs
    assert len(theirs) > 40


def test_sample_lines_the_collector_does_not_write() -> None:
    text = (
        "# a comment\n"
        'other_metric{model="x"} 5\n'
        'cachecow_hits_total{model="m",} 2 1700000000000\n'  # a trailing comma, a timestamp
        'cachecow_misses_total { model = "m" } 1.5e1\n'
        'cachecow_operation_seconds_bucket{le="+Inf",model="m",operation="get"} 4 '
        '# {trace_id="a"} 0.5\n'  # an OpenMetrics exemplar
        "cachecow_busy_total 1\n"  # no labels: no one model
    )
    samples, present = parse_samples(text)
    assert present
    assert [(s.name, s.labels, s.value) for s in samples] == [
        ("cachecow_hits_total", {"model": "m"}, 2.0),
        ("cachecow_misses_total", {"model": "m"}, 15.0),
        ("cachecow_operation_seconds_bucket", {"le": "+Inf", "model": "m", "operation": "get"}, 4),
        ("cachecow_busy_total", {}, 1.0),
    ]
    with pytest.raises(
        ValueError, match=r"line 2 is not a sample: 'cachecow_hits_total\{model=\"m\} 2'"
    ):
        parse_samples('cachecow_hits_total 1\ncachecow_hits_total{model="m} 2\n')
    with pytest.raises(ValueError, match="line 1 is not a sample"):
        parse_samples('cachecow_hits_total{model="m"} many\n')
    assert parse_samples("# TYPE cachecow_hits_total counter\n") == ([], True)
    assert parse_samples("# TYPE cachecow_hits counter\n") == ([], True)  # OpenMetrics
    assert (
        parse_samples("# TYPE cachecow_other_total counter\ncachecow_other_total 1\n")[1] is False
    )


def test_quantile_as_prometheus_estimates_it() -> None:
    buckets = [(0.001, 2.0), (0.01, 6.0), (0.1, 10.0), (INF, 10.0)]
    assert quantile(0.1, buckets) == pytest.approx(0.0005)  # rank 1: halfway into [0, 0.001]
    assert quantile(0.5, buckets) == pytest.approx(0.001 + 0.009 * 3 / 4)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * 3.9 / 4)
    assert quantile(1.0, buckets) == pytest.approx(0.1)
    assert quantile(0.5, [(0.001, 1.0), (INF, 4.0)]) == INF  # rank 2 is past the last bound
    assert quantile(0.5, [(0.001, 0.0), (INF, 0.0)]) is None
    assert quantile(0.5, []) is None
    assert quantile(0.5, [(0.001, 3.0)]) is None  # no +Inf: not a histogram
    # Empty buckets before and after the rank's bucket change nothing.
    assert quantile(0.5, [(0.001, 0.0), (0.01, 0.0), (0.1, 4.0), (1.0, 4.0), (INF, 4.0)]) == (
        pytest.approx(0.01 + 0.09 / 2)
    )


def test_sums_over_pages_and_caches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = cache_with(
        {MODEL: {"hits": 5, "misses": 2, "leases": 2, "commits": 1, "stale_commits": 1}},
        {MODEL: [0.0002] * 6 + [0.003]},
    )
    two = cache_with({MODEL: {"hits": 1, "tombstone_hits": 1, "busy": 3, "misses": 3}}, {})
    three = cache_with({"app.Order": {"redis_errors": 4}, "": {"invalidations": 9}}, {})
    first, second = tmp_path / "one.prom", tmp_path / "two.prom"
    first.write_text(page({"a": one}))
    second.write_text(page({"b": two, "c": three}, open_metrics=True))
    code, out, err = run(capsys, str(first), str(second), "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    user = report["models"][MODEL]
    assert {k: v for k, v in user["counters"].items() if v} == {
        "hits": 6,
        "tombstone_hits": 1,
        "misses": 5,
        "leases": 2,
        "commits": 1,
        "stale_commits": 1,
        "busy": 3,
    }
    assert (user["hits"], user["hit_ratio"]) == (7, 7 / 12)
    assert user["get"]["count"] == 7
    assert user["get"]["p50_seconds"] == pytest.approx(0.0001 + 0.00015 * 3.5 / 6)
    assert user["get"]["p99_seconds"] == pytest.approx(0.0025 + 0.0025 * (6.93 - 6))
    assert list(report["models"]) == ["app.Order", MODEL, ""]  # no one model's counts last
    assert report["total"]["counters"]["redis_errors"] == 4
    assert report["total"]["counters"]["invalidations"] == 9
    assert report["total"]["get"]["count"] == 7
    assert report["models"]["app.Order"]["hit_ratio"] is None
    assert report["models"]["app.Order"]["get"]["p50_seconds"] is None

    code, out, _ = run(capsys, str(first), str(second))
    assert code == 0
    assert out.splitlines()[0] == f"counters summed over 2 sources: {first}, {second}"
    assert [line.split() for line in out.splitlines()[2:]] == [
        ["app.Order", "0", "0", "-", "0", "0", "0", "0", "4", "-", "-"],
        [MODEL, "7", "5", "58.3%", "2", "1", "1", "3", "0", "0.19", "ms", "4.8", "ms"],
        ["(no", "model)", "0", "0", "-", "0", "0", "0", "0", "0", "-", "-"],
        ["total", "7", "5", "58.3%", "2", "1", "1", "3", "4", "0.19", "ms", "4.8", "ms"],
    ]


def test_standard_input_a_slow_get_and_a_namespace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    slow = cache_with({MODEL: {"misses": 1}}, {MODEL: [30.0]})
    monkeypatch.setattr("sys.stdin", io.StringIO(page({"x": slow}, ns="shop")))
    code, out, _ = run(capsys, "-", "--namespace", "shop")
    assert code == 0
    assert out.splitlines()[0] == "counters summed over 1 source: -"
    assert out.splitlines()[2].split()[-4:] == [">10", "s", ">10", "s"]  # past the last bound
    monkeypatch.setattr("sys.stdin", io.StringIO(page({"x": slow}, ns="shop")))
    code, out, _ = run(capsys, "-", "--namespace", "shop", "--json")
    assert json.loads(out)["models"][MODEL]["get"]["p99_seconds"] == BUCKETS[-1]
    monkeypatch.setattr("sys.stdin", io.StringIO(page({"x": slow}, ns="shop")))
    code, _, err = run(capsys, "-")
    assert (code, err.split(":")[:2]) == (2, ["cachecow counters", " -"])
    assert "no cachecow metrics" in err


def test_histograms_of_other_bounds_are_not_summed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two versions' buckets: no percentile, rather than a wrong one; the counts still add."""
    cache = cache_with({MODEL: {"hits": 1}}, {MODEL: [0.0003]})
    text = page({"a": cache})
    other = text.replace('le="0.0001"', 'le="0.0002"')
    (tmp_path / "a").write_text(text)
    (tmp_path / "b").write_text(other)
    models = collect([("a", text), ("b", other)])
    assert models[MODEL].buckets is None
    assert models[MODEL].quantile(0.5) is None
    assert models[MODEL].get_count == 2
    code, out, _ = run(capsys, str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 0
    assert out.splitlines()[2].split()[-3:] == ["0", "-", "-"]


def test_files_that_cannot_be_read_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.prom"
    code, out, err = run(capsys, str(missing))
    assert (code, out) == (2, "")
    assert err == f"cachecow counters: {missing}: No such file or directory\n"
    code, _, err = run(capsys, "ftp://example.invalid/metrics")
    assert (code, err) == (
        2,
        "cachecow counters: ftp://example.invalid/metrics: not an http(s) URL, '-' or a file\n",
    )
    broken = tmp_path / "broken.prom"
    broken.write_text('cachecow_hits_total{model="m"} 1\ncachecow_hits_total{model="m" 2\n')
    code, _, err = run(capsys, str(broken))
    assert code == 2
    assert err.startswith(f"cachecow counters: {broken}: line 2 is not a sample: ")
    broken.write_text('cachecow_operation_seconds_bucket{le="soon",model="m",operation="get"} 1\n')
    code, _, err = run(capsys, str(broken))
    assert (code, err) == (
        2,
        f"cachecow counters: {broken}: a bucket's bound is not a number: le='soon'\n",
    )


def test_help() -> None:
    with pytest.raises(SystemExit) as done:
        main(["counters", "--help"])
    assert done.value.code == 0


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0.0, "0 ms"),
        (0.0000635, "0.064 ms"),
        (0.00245, "2.4 ms"),
        (0.0123, "12 ms"),
        (0.1504, "150 ms"),
        (0.9996, "1 s"),
        (2.5, "2.5 s"),
        (INF, ">10 s"),
    ],
)
def test_durations_are_shown_with_two_figures(seconds: float | None, shown: str) -> None:
    assert _duration(seconds, BUCKETS[-1]) == shown
