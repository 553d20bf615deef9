"""``manage.py cachecow_counters``: ``cachecow counters`` as a management command (a page read
from a file here; tests/server/test_counters.py reads real endpoints)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import redis
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from prometheus_client import CollectorRegistry, generate_latest

from cachecow.adapters.django import DjangoCache
from cachecow.exporters.prometheus import PrometheusCollector

LABEL = "djapp.models.Person"


def test_counters_of_a_page_and_errors(tmp_path: Path) -> None:
    cache = DjangoCache(redis.Redis(port=1))  # counts by hand: no Redis is reached
    cache.metrics.incr("hits", 4, LABEL)
    cache.metrics.incr("misses", 1, LABEL)
    registry = CollectorRegistry()
    PrometheusCollector(cache, registry=registry)
    page = tmp_path / "page.prom"
    page.write_bytes(generate_latest(registry))
    out = io.StringIO()
    call_command("cachecow_counters", str(page), "--json", stdout=out)
    assert json.loads(out.getvalue())["models"][LABEL]["counters"]["hits"] == 4
    out = io.StringIO()
    call_command("cachecow_counters", str(page), "--model", LABEL, stdout=out)
    assert out.getvalue().splitlines()[2].split()[:4] == [LABEL, "4", "1", "80.0%"]
    with pytest.raises(CommandError, match="No such file or directory") as failed:
        call_command("cachecow_counters", str(tmp_path / "nope"), stdout=io.StringIO())
    assert failed.value.returncode == 2
    parser = load_command_class("cachecow.adapters.django", "cachecow_counters").create_parser(
        "manage.py", "cachecow_counters"
    )
    assert "--timeout" in parser.format_help()
