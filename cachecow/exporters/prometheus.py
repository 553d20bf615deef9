"""Prometheus export of caches' metrics (``pip install 'cachecow-orm[prometheus]'``).

:class:`PrometheusCollector` is a custom collector: at each scrape it reads the caches' counters
and histograms (nothing is recorded twice, and a cache pays nothing between scrapes)::

    from cachecow.exporters.prometheus import PrometheusCollector

    PrometheusCollector({"users": user_cache, "orders": order_cache})  # on the default registry

It exposes ``cachecow_<counter>_total{cache, model}`` for each counter and
``cachecow_operation_seconds{cache, operation, model}``, a histogram of the public calls'
durations (buckets: :data:`cachecow.metrics.BUCKETS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cachecow.exporters import missing, named_caches

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing("prometheus", "prometheus_client") from exc

from cachecow.metrics import COUNTERS, DESCRIPTIONS

__all__ = ["PrometheusCollector"]


class PrometheusCollector(Collector):
    """Collect the counters and durations of one cache, or of several by name.

    :param caches: a cache (its ``cache`` label is ``"default"``) or a mapping of names to
        caches. Register one collector for all of a process's caches: two collectors on one
        registry would expose the same metric names, which the registry refuses.
    :param registry: where to register (default: ``prometheus_client.REGISTRY``); ``None``
        registers nowhere.
    :param namespace: the start of every metric name (default ``"cachecow"``).
    """

    def __init__(
        self,
        caches: Any,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "cachecow",
    ) -> None:
        self.caches = named_caches(caches)
        self.namespace = namespace
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (so a registry can refuse duplicates)."""
        counters, histogram = self._families()
        yield from counters
        yield histogram

    def collect(self) -> Iterator[Metric]:
        """Every counter of every model of every cache, and the durations' histograms."""
        counters, histogram = self._families()
        for name, cache in self.caches.items():
            for model, snapshot in sorted(cache.metrics.by_model().items()):
                for family, value in zip(counters, snapshot.as_dict().values(), strict=True):
                    family.add_metric([name, model], value)
            for (operation, model), durations in sorted(cache.metrics.histograms().items()):
                buckets = [(_bound(le), n) for le, n in durations.cumulative()]
                histogram.add_metric([name, operation, model], buckets, durations.sum)
        yield from counters
        yield histogram

    def _families(self) -> tuple[list[CounterMetricFamily], HistogramMetricFamily]:
        ns = self.namespace
        counters = [
            CounterMetricFamily(f"{ns}_{counter}", DESCRIPTIONS[counter], labels=["cache", "model"])
            for counter in COUNTERS
        ]
        histogram = HistogramMetricFamily(
            f"{ns}_operation_seconds",
            "Durations of the cache's public calls, in seconds.",
            labels=["cache", "operation", "model"],
        )
        return counters, histogram


def _bound(seconds: float) -> str:
    """A bucket's ``le`` label, as Prometheus writes it."""
    return "+Inf" if seconds == float("inf") else repr(seconds)
