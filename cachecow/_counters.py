"""What ``cachecow counters`` does: read the Prometheus pages of application processes that
expose :class:`~cachecow.exporters.prometheus.PrometheusCollector`, sum the caches' counters
over the pages (and over the caches of each page) per model, and report them with the
percentiles of ``get``'s durations estimated from the histogram's buckets.

The counters live in each application process (``cache.metrics``); a command-line process has
none of its own, so it reads what the processes export. The pages are read with the standard
library alone: ``urllib.request`` for ``http(s)`` URLs, and a parser of the text exposition
format's sample lines (the Prometheus format, and OpenMetrics', whose sample lines are the same
but for exemplars) that reads only the ``<namespace>_*`` samples, so the command needs no extra.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._version import __version__
from .metrics import COUNTERS, UNATTRIBUTED

__all__ = [
    "ModelCounters",
    "ScrapeError",
    "add_arguments",
    "collect",
    "counters_report",
    "parse_samples",
    "quantile",
    "read_source",
    "run",
]

Write = Callable[[str], None]

DEFAULT_TIMEOUT = 5.0
"""Seconds ``counters`` waits for a page (to connect, then for each read)."""

OPERATION = "get"
"""The operation whose durations the report's percentiles are of."""

ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"
"""The Prometheus text format, which every client library serves."""

INF = math.inf


class ScrapeError(Exception):
    """A page that cannot be read, or holds no cachecow metrics: the message names it."""


# -- reading a page -----------------------------------------------------------------------------


def read_source(source: str, timeout: float, stdin: TextIO) -> str:
    """The text of ``source``: an ``http(s)`` URL (read with ``timeout``), ``-`` (standard
    input), or a file's path."""
    if source == "-":
        return stdin.read()
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(source, timeout)
    if "://" in source:
        raise ScrapeError(f"{source}: not an http(s) URL, '-' or a file")
    try:
        with open(source, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError as exc:
        raise ScrapeError(f"{source}: {exc.strerror or exc}") from exc


def _fetch(url: str, timeout: float) -> str:
    headers = {"Accept": ACCEPT, "User-Agent": f"cachecow/{__version__}"}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            charset = response.headers.get_content_charset() or "utf-8"
            encoding = (response.headers.get("Content-Encoding") or "").lower()
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise ScrapeError(f"{url}: unreachable: {_reason(exc.reason, timeout)}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ScrapeError(f"{url}: {_reason(exc, timeout)}") from exc
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise ScrapeError(f"{url}: a gzip body that does not decompress: {exc}") from exc
    return body.decode(charset, errors="replace")


def _reason(reason: Any, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s (--timeout)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


# -- the text format ----------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_SAMPLE = re.compile(rf"({_NAME})\s*(?:\{{((?:[^\"}}]|{_QUOTED})*)\}})?\s+(.*)")
_PAIR = re.compile(rf"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*({_QUOTED})\s*(?:,|$)")
_ESCAPE = re.compile(r"\\(.)")
_COMMENT = re.compile(rf"#\s+(?:HELP|TYPE)\s+({_NAME})")


@dataclass(frozen=True)
class Sample:
    """One sample line: its metric name, labels and value."""

    name: str
    labels: dict[str, str]
    value: float


def _unescape(quoted: str) -> str:
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), quoted[1:-1])


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    text = text.strip()
    pos = 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if match is None:
            raise ValueError(f"labels {text!r}")
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
    return labels


def _parse_line(line: str) -> Sample:
    match = _SAMPLE.fullmatch(line)
    if match is None:
        raise ValueError(line)
    name, labels, rest = match.groups()
    fields = rest.split("#", 1)[0].split()  # OpenMetrics: an exemplar after '#'
    if not fields or len(fields) > 2:
        raise ValueError(line)
    return Sample(name, _parse_labels(labels or ""), float(fields[0]))


def _names(namespace: str) -> tuple[dict[str, str], set[str]]:
    """The sample names of the counters (name: counter), and every family and sample name the
    collector writes (the text format names a counter's family ``..._total``, OpenMetrics
    without it)."""
    counters = {f"{namespace}_{counter}_total": counter for counter in COUNTERS}
    seconds = f"{namespace}_operation_seconds"
    known = {*counters, *(name[: -len("_total")] for name in counters), seconds}
    known |= {f"{seconds}_bucket", f"{seconds}_count", f"{seconds}_sum"}
    return counters, known


def parse_samples(text: str, namespace: str = "cachecow") -> tuple[list[Sample], bool]:
    """The samples of ``text`` whose names start with ``<namespace>_``, and whether it holds
    any of the collector's families (a sample, or a ``# HELP``/``# TYPE`` line: a process whose
    caches have counted nothing yet writes the families without samples). Raises
    :class:`ValueError` for a line of the namespace that is not a sample."""
    _, known = _names(namespace)
    start = f"{namespace}_"
    samples: list[Sample] = []
    present = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            comment = _COMMENT.match(line)
            present = present or (comment is not None and comment.group(1) in known)
            continue
        if not line.startswith(start):
            continue
        try:
            sample = _parse_line(line)
        except ValueError:
            raise ValueError(f"line {number} is not a sample: {line[:120]!r}") from None
        present = present or sample.name in known
        samples.append(sample)
    return samples, present


# -- summing ------------------------------------------------------------------------------------


@dataclass
class ModelCounters:
    """One model's counters summed over the pages and caches, and its ``get`` durations:
    ``buckets`` maps each upper bound to the durations up to it (cumulative, as Prometheus
    buckets are), ``None`` when the series disagree on the bounds."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    buckets: dict[float, float] | None = field(default_factory=dict)
    get_count: float = 0.0
    get_sum: float = 0.0

    def add(self, other: ModelCounters) -> None:
        for name, value in other.counters.items():
            self.counters[name] += value
        self.buckets = _add_buckets(self.buckets, other.buckets)
        self.get_count += other.get_count
        self.get_sum += other.get_sum

    @property
    def hits(self) -> int:
        """Gets answered from the cache: objects and tombstones."""
        return self.counters["hits"] + self.counters["tombstone_hits"]

    @property
    def hit_ratio(self) -> float | None:
        """Hits over hits and misses (None before any)."""
        looked = self.hits + self.counters["misses"]
        return self.hits / looked if looked else None

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile of ``get``'s durations (see :func:`quantile`)."""
        if not self.buckets:
            return None
        return quantile(q, sorted(self.buckets.items()))


def _add_buckets(
    mine: dict[float, float] | None, theirs: dict[float, float] | None
) -> dict[float, float] | None:
    if mine is None or theirs is None:
        return None
    if not mine or not theirs:
        return dict(mine or theirs)
    if mine.keys() != theirs.keys():
        return None  # other bounds (another version's buckets): no sum of them holds
    return {bound: count + theirs[bound] for bound, count in mine.items()}


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile of a histogram's cumulative ``(upper bound, count)`` buckets, ending
    with ``+Inf``, as Prometheus's ``histogram_quantile`` estimates it: linear within the
    bucket that holds the rank, from 0 for the first. A rank in the ``+Inf`` bucket gives
    ``inf`` (above the last bound); no durations, ``None``."""
    if not buckets or buckets[-1][0] != INF or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if bound == INF:
                return INF
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return INF


def collect(
    pages: Iterable[tuple[str, str]], namespace: str = "cachecow"
) -> dict[str, ModelCounters]:
    """The counters of every model in ``pages`` (``(source, text)`` pairs), summed. Raises
    :class:`ScrapeError` for a page without the collector's metrics, or one that does not
    parse."""
    models: dict[str, ModelCounters] = {}
    for source, text in pages:
        try:
            page = _page(text, namespace)
        except ValueError as exc:
            raise ScrapeError(f"{source}: {exc}") from None
        if page is None:
            raise ScrapeError(
                f"{source}: no cachecow metrics ({namespace}_hits_total...): is a "
                "cachecow.exporters.prometheus.PrometheusCollector registered there?"
            )
        for model, entry in page.items():
            models.setdefault(model, ModelCounters()).add(entry)
    return models


def _page(text: str, namespace: str) -> dict[str, ModelCounters] | None:
    """The counters of one page by model, summed over its caches (None: not the collector's)."""
    samples, present = parse_samples(text, namespace)
    if not present:
        return None
    counter_names, _ = _names(namespace)
    seconds = f"{namespace}_operation_seconds"
    page: dict[str, ModelCounters] = {}
    series: dict[tuple[str, frozenset[tuple[str, str]]], dict[float, float]] = {}
    for sample in samples:
        model = sample.labels.get("model", UNATTRIBUTED)
        counter = counter_names.get(sample.name)
        if counter is not None:
            page.setdefault(model, ModelCounters()).counters[counter] += round(sample.value)
            continue
        if not sample.name.startswith(seconds) or sample.labels.get("operation") != OPERATION:
            continue
        entry = page.setdefault(model, ModelCounters())
        if sample.name == f"{seconds}_count":
            entry.get_count += sample.value
        elif sample.name == f"{seconds}_sum":
            entry.get_sum += sample.value
        elif sample.name == f"{seconds}_bucket":
            le = sample.labels.get("le", "")
            try:
                bound = float(le)
            except ValueError:
                raise ValueError(f"a bucket's bound is not a number: le={le!r}") from None
            key = frozenset((k, v) for k, v in sample.labels.items() if k != "le")
            series.setdefault((model, key), {})[bound] = sample.value
    for (model, _), buckets in series.items():  # one a cache: summed if their bounds agree
        page[model].buckets = _add_buckets(page[model].buckets, buckets)
    return page


# -- the report ---------------------------------------------------------------------------------

COLUMNS = (
    "model",
    "hits",
    "misses",
    "hit ratio",
    "leases",
    "commits",
    "stale commits",
    "busy",
    "redis errors",
    f"{OPERATION} p50",
    f"{OPERATION} p99",
)


def _shown(model: str) -> str:
    return model if model != UNATTRIBUTED else "(no model)"


def _duration(seconds: float | None, highest: float) -> str:
    if seconds is None:
        return "-"
    if seconds == INF:
        return ">" + _duration(highest, highest)
    ms = seconds * 1000  # two figures: the buckets tell no more
    if ms < 9.95:
        return f"{ms:.2g} ms"
    return f"{ms:.0f} ms" if ms < 999.5 else f"{seconds:.2g} s"


def _highest(entry: ModelCounters) -> float:
    finite = [bound for bound in entry.buckets or () if bound != INF]
    return max(finite, default=0.0)


def _row(name: str, entry: ModelCounters) -> tuple[str, ...]:
    c = entry.counters
    ratio = entry.hit_ratio
    highest = _highest(entry)
    return (
        name,
        str(entry.hits),
        str(c["misses"]),
        "-" if ratio is None else f"{ratio:.1%}",
        str(c["leases"]),
        str(c["commits"]),
        str(c["stale_commits"]),
        str(c["busy"]),
        str(c["redis_errors"]),
        _duration(entry.quantile(0.5), highest),
        _duration(entry.quantile(0.99), highest),
    )


def _as_json(entry: ModelCounters) -> dict[str, Any]:
    def seconds(q: float) -> float | None:
        value = entry.quantile(q)
        return _highest(entry) if value == INF else value

    return {
        "counters": dict(entry.counters),
        "hits": entry.hits,
        "hit_ratio": entry.hit_ratio,
        OPERATION: {
            "count": round(entry.get_count),
            "sum_seconds": entry.get_sum,
            "p50_seconds": seconds(0.5),
            "p99_seconds": seconds(0.99),
        },
    }


def _order(model: str) -> tuple[bool, str]:
    return (model == UNATTRIBUTED, model)


def counters_report(
    models: dict[str, ModelCounters],
    sources: Sequence[str],
    write: Write,
    *,
    only: Sequence[str] | None = None,
    as_json: bool = False,
) -> ModelCounters:
    """A table of the models' counters (or, with ``only``, of those models), then their
    totals; with ``as_json``, one JSON document of every counter. Returns the totals."""
    if only:
        missing = [model for model in only if model not in models]
        if missing:
            seen = ", ".join(_shown(m) for m in sorted(models, key=_order)) or "none"
            raise ScrapeError(f"no counters of {', '.join(map(repr, missing))} (models: {seen})")
        models = {model: models[model] for model in dict.fromkeys(only)}
    total = ModelCounters()
    for entry in models.values():
        total.add(entry)
    ordered = sorted(models, key=_order)
    if as_json:
        document = {
            "sources": list(sources),
            "models": {model: _as_json(models[model]) for model in ordered},
            "total": _as_json(total),
        }
        write(json.dumps(document, indent=2))
        return total
    count = len(sources)
    write(f"counters summed over {count} source{'s' if count != 1 else ''}: {', '.join(sources)}")
    rows = [COLUMNS, *(_row(_shown(model), models[model]) for model in ordered)]
    rows.append(_row("total", total))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        write("  ".join(cells).rstrip())
    return total


# -- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments (``cachecow counters`` and ``manage.py cachecow_counters``)."""
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="URL",
        help="a Prometheus page of an application process (http:// or https://), '-' for "
        "standard input, or a file holding a page",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="LABEL",
        help="only this model, by its label in the counters (module.QualName); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print every counter as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each page (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--namespace",
        default="cachecow",
        help="the collector's namespace, the start of the metric names (default cachecow)",
    )


def run(options: dict[str, Any], write: Write, stdin: TextIO) -> ModelCounters:
    """Read the pages ``options`` name (the parsed arguments), sum and report them."""
    sources: list[str] = options["sources"]
    pages = [(source, read_source(source, options["timeout"], stdin)) for source in sources]
    models = collect(pages, options["namespace"])
    return counters_report(models, sources, write, only=options["model"], as_json=options["json"])
