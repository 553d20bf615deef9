"""``cachecow counters`` against real pages: caches on a real Redis (and one on a Redis that is
down) exported by ``PrometheusCollector`` on two HTTP endpoints, as two application processes
would serve them; the command's sums equal the caches' own ``metrics``. And its errors: a
page that cannot be reached, answers late, fails, or holds no cachecow metrics (exit 2)."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    make_wsgi_app,
)

import cachecow
from cachecow import CacheCow, NotFound
from cachecow._counters import quantile
from cachecow.cli import main
from cachecow.exporters.prometheus import PrometheusCollector
from cachecow.metrics import BUCKETS, COUNTERS

ROOT = Path(__file__).resolve().parents[2]


class User:
    pass


class Order:
    pass


USER = f"{__name__}.User"
ORDER = f"{__name__}.Order"
ROWS = {User: {i: f"user {i}" for i in range(1, 20)}, Order: {7: "seven"}}
STALE_ID = 13  # its fetch sees an invalidation of its own lookup: the commit is refused


class ShopCache(CacheCow):
    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        if cls is User and id_val == STALE_ID:
            self.invalidate(User, "id", STALE_ID)  # a write while the read was in flight
        name = ROWS[cls].get(id_val)
        return None if name is None else {"id": id_val, "name": name}


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


Serve = Callable[[Any], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(app)``: a WSGI app on a free port of 127.0.0.1, on a thread; its URL."""
    servers: list[WSGIServer] = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/metrics"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def exported(serve: Serve, caches: dict[str, CacheCow]) -> str:
    """The URL of a process's page: ``caches`` on a registry of their own."""
    registry = CollectorRegistry()
    PrometheusCollector(caches, registry=registry)
    return serve(make_wsgi_app(registry))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["counters", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def caches(redis_client: redis.Redis, redis_server: Any) -> Iterator[list[CacheCow]]:
    """Three caches with counts in every column: ``a`` (hits, misses, tombstones, a stale
    commit), ``b`` (``busy="fetch"``, a lease held by another reader) and ``down`` (a Redis
    that refuses connections, ``fail_open``: Redis errors)."""
    client_b = cachecow.connect(redis_server.url)
    client_down = cachecow.connect(f"redis://127.0.0.1:{closed_port()}/0")
    a = ShopCache(redis_client)
    b = ShopCache(client_b, prefix="b:", busy="fetch")
    down = ShopCache(client_down, fail_open=True, fail_open_log_interval=3600)
    for i in (1, 2, 3, 1, 1, 2, STALE_ID, STALE_ID):
        a.get(User, "id", i)
    a.get(Order, "id", 7)
    for _ in range(2):
        with pytest.raises(NotFound):
            a.get(Order, "id", 99)  # a miss and a tombstone, then a tombstone hit
    a.get_many(User, "id", [1, 2, 4])
    client_b.set(b.get_keys(User, "id", 5)[1], b"another reader", px=5000)
    for i in (5, 5, 6, 6, 6):
        b.get(User, "id", i)  # 5: busy twice (fetched, not cached); 6: a miss, two hits
    b.get(Order, "id", 7)
    down.get(User, "id", 1)
    down.get(User, "id", 2)
    yield [a, b, down]
    client_b.close()
    client_down.close()


def expected(caches: list[CacheCow]) -> dict[str, dict[str, int]]:
    """Each model's counters summed over ``caches``, as their own metrics count them."""
    sums: dict[str, dict[str, int]] = {}
    for cache in caches:
        for model, snapshot in cache.metrics.by_model().items():
            row = sums.setdefault(model, dict.fromkeys(COUNTERS, 0))
            for name, value in snapshot.as_dict().items():
                row[name] += value
    return sums


def get_buckets(caches: list[CacheCow], model: str | None) -> list[tuple[float, float]]:
    """The cumulative buckets of ``get``'s durations summed over ``caches`` (every model when
    ``model`` is None)."""
    counts = [0] * (len(BUCKETS) + 1)
    for cache in caches:
        for (operation, label), histogram in cache.metrics.histograms().items():
            if operation == "get" and model in (None, label):
                counts = [x + y for x, y in zip(counts, histogram.counts, strict=True)]
    out, total = [], 0
    for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


def test_json_sums_equal_the_caches_own_counters(
    caches: list[CacheCow], serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, down = caches
    one = exported(serve, {"a": a})
    two = exported(serve, {"b": b, "down": down})  # a process with two caches
    code, out, err = run(capsys, one, two, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    sums = expected(caches)
    assert report["sources"] == [one, two]
    assert list(report["models"]) == sorted(sums) == [ORDER, USER]
    for model, counts in sums.items():
        shown = report["models"][model]
        assert shown["counters"] == counts, model
        assert shown["hits"] == counts["hits"] + counts["tombstone_hits"]
        ratio = shown["hits"] / (shown["hits"] + counts["misses"])
        assert shown["hit_ratio"] == pytest.approx(ratio)
        buckets = get_buckets(caches, model)
        assert shown["get"]["count"] == buckets[-1][1]
        assert shown["get"]["p50_seconds"] == pytest.approx(quantile(0.5, buckets))
        assert shown["get"]["p99_seconds"] == pytest.approx(quantile(0.99, buckets))
        assert 0 < shown["get"]["p50_seconds"] <= shown["get"]["p99_seconds"] <= BUCKETS[-1]
        assert shown["get"]["sum_seconds"] == pytest.approx(
            sum(
                h.sum
                for cache in caches
                for (op, label), h in cache.metrics.histograms().items()
                if (op, label) == ("get", model)
            )
        )
    # Every column of the table counted something: the sums are not of zeros.
    user = sums[USER]
    assert user["stale_commits"] == 2  # both gets of STALE_ID
    assert user["busy"] == 2
    assert user["redis_errors"] >= 2
    assert user["fail_open_fetches"] == 2
    total = report["total"]
    assert total["counters"] == {name: sum(m[name] for m in sums.values()) for name in COUNTERS}
    assert total["get"]["count"] == get_buckets(caches, None)[-1][1]
    assert total["get"]["p99_seconds"] == pytest.approx(quantile(0.99, get_buckets(caches, None)))


def test_table_per_model_and_totals(
    caches: list[CacheCow], serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, down = caches
    one, two = exported(serve, {"a": a}), exported(serve, {"b": b, "down": down})
    code, out, _ = run(capsys, one, two)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"counters summed over 2 sources: {one}, {two}"
    header = [cell.strip() for cell in lines[1].split("  ") if cell.strip()]
    assert header == [
        "model",
        "hits",
        "misses",
        "hit ratio",
        "leases",
        "commits",
        "stale commits",
        "busy",
        "redis errors",
        "get p50",
        "get p99",
    ]
    sums = expected(caches)
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(rows) == [ORDER, USER, "total"]
    totals = {name: sum(m[name] for m in sums.values()) for name in COUNTERS}
    for label, counts in [*sums.items(), ("total", totals)]:
        hits = counts["hits"] + counts["tombstone_hits"]
        ratio = f"{hits / (hits + counts['misses']):.1%}"
        assert rows[label][1:4] == [str(hits), str(counts["misses"]), ratio], label
        columns = ("leases", "commits", "stale_commits", "busy", "redis_errors")
        assert rows[label][4:9] == [str(counts[name]) for name in columns], label
        assert rows[label][10] == "ms"  # p50 "0.123 ms", p99 likewise
        assert rows[label][12] == "ms"


def test_model_filter_and_python_m_cachecow(
    caches: list[CacheCow], serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, down = caches
    one, two = exported(serve, {"a": a}), exported(serve, {"b": b, "down": down})
    done = subprocess.run(
        [sys.executable, "-m", "cachecow", "counters", one, two, "--model", ORDER, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    order = expected(caches)[ORDER]
    assert list(report["models"]) == [ORDER]
    assert report["models"][ORDER]["counters"] == order
    assert report["total"]["counters"] == order
    code, out, _ = run(capsys, one, two, "--model", ORDER)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:]] == [ORDER, "total"]
    code, _, err = run(capsys, one, "--model", "app.Nobody")
    assert code == 2
    assert err == (f"cachecow counters: no counters of 'app.Nobody' (models: {ORDER}, {USER})\n")


def test_a_gzipped_page(
    caches: list[CacheCow], serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that compresses though not asked to."""
    registry = CollectorRegistry()
    PrometheusCollector({"a": caches[0]}, registry=registry)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Encoding", "gzip")]
        start_response("200 OK", headers)
        return [gzip.compress(generate_latest(registry))]

    code, out, _ = run(capsys, serve(app), "--json")
    assert code == 0
    assert json.loads(out)["total"]["counters"]["hits"] == caches[0].metrics.snapshot().hits


def test_a_process_whose_caches_counted_nothing_yet(
    redis_client: redis.Redis, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    """The collector writes its families without samples: cachecow is there, all zeros."""
    url = exported(serve, {"idle": ShopCache(redis_client)})
    code, out, err = run(capsys, url)
    assert (code, err) == (0, "")
    assert out.splitlines()[2].split() == [
        "total",
        "0",
        "0",
        "-",
        "0",
        "0",
        "0",
        "0",
        "0",
        "-",
        "-",
    ]


def test_pages_that_cannot_be_read_or_are_not_cachecows_exit_2(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/missing":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such page"]
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<html><body>the application's home page</body></html>"]

    base = serve(app).rsplit("/", 1)[0]
    code, out, err = run(capsys, f"{base}/missing")
    assert (code, out) == (2, "")
    assert err == f"cachecow counters: {base}/missing: HTTP 404 Not Found\n"
    code, _, err = run(capsys, f"{base}/")
    assert code == 2
    assert err.startswith(f"cachecow counters: {base}/: no cachecow metrics (cachecow_hits_total")
    assert "PrometheusCollector registered there?" in err
    # A page of other metrics only (an empty registry's, a process without the collector).
    code, _, err = run(capsys, serve(make_wsgi_app(CollectorRegistry())))
    assert code == 2
    assert "no cachecow metrics" in err
    # Nothing listening.
    port = closed_port()
    code, out, err = run(capsys, f"http://127.0.0.1:{port}/metrics")
    assert (code, out) == (2, "")
    assert err.startswith(f"cachecow counters: http://127.0.0.1:{port}/metrics: unreachable: ")
    assert "refused" in err.lower()


def test_a_page_that_does_not_answer_in_time_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server that accepts the connection (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
        code, out, err = run(capsys, url, "--timeout", "0.3")
    assert (code, out) == (2, "")
    assert err == f"cachecow counters: {url}: no answer within 0.3 s (--timeout)\n"
