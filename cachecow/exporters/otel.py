"""OpenTelemetry export of caches' metrics (``pip install 'cachecow-orm[otel]'``).

:class:`OpenTelemetryMetrics` bridges caches to an OpenTelemetry meter::

    from cachecow.exporters.otel import OpenTelemetryMetrics

    bridge = OpenTelemetryMetrics({"users": user_cache})  # the global meter provider

- each counter is an *observable counter* ``cachecow.<counter>`` (attributes ``cachecow.cache``
  and ``cachecow.model``): the cache already keeps monotonic totals, which the SDK reads at each
  collection, so nothing is counted twice and a cache pays nothing between collections;
- the public calls' durations go to a *histogram* ``cachecow.operation.duration`` (seconds;
  attributes ``cachecow.cache``, ``cachecow.operation``, ``cachecow.model``), recorded at the
  end of each call. OpenTelemetry has no asynchronous histogram, and copying the cache's own
  buckets into gauges would lose the histogram type (no aggregation across processes, no
  quantiles), so each duration is recorded as it happens, with the cache's bucket bounds as the
  advised boundaries.

``close()`` stops recording durations (the counters' callbacks stay with the meter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cachecow.exporters import missing, named_caches

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing("otel", "opentelemetry-api") from exc

from cachecow._version import __version__
from cachecow.metrics import BUCKETS, COUNTERS, DESCRIPTIONS

__all__ = ["OpenTelemetryMetrics"]


class OpenTelemetryMetrics:
    """Export one cache's metrics, or several caches' by name, through an OpenTelemetry meter.

    :param caches: a cache (its ``cachecow.cache`` attribute is ``"default"``) or a mapping of
        names to caches.
    :param meter_provider: the provider of the ``cachecow`` meter (default: the global one).
    """

    def __init__(self, caches: Any, *, meter_provider: MeterProvider | None = None) -> None:
        self.caches = named_caches(caches)
        meter = otel_metrics.get_meter("cachecow", __version__, meter_provider=meter_provider)
        for counter in COUNTERS:
            meter.create_observable_counter(
                f"cachecow.{counter}",
                callbacks=[self._observer(counter)],
                description=DESCRIPTIONS[counter],
            )
        description = "Durations of the cache's public calls."
        try:
            self.histogram: Histogram = meter.create_histogram(
                "cachecow.operation.duration",
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=BUCKETS,
            )
        except TypeError:  # an API older than 1.23: the SDK's (or a View's) buckets
            self.histogram = meter.create_histogram(
                "cachecow.operation.duration", unit="s", description=description
            )
        self._listeners: list[tuple[Any, Callable[[str, str, float], None]]] = []
        for name, cache in self.caches.items():
            listener = self._recorder(name)
            cache.metrics.add_duration_listener(listener)
            self._listeners.append((cache, listener))

    def close(self) -> None:
        """Stop recording the caches' durations."""
        for cache, listener in self._listeners:
            cache.metrics.remove_duration_listener(listener)
        self._listeners = []

    def _observer(self, counter: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for name, cache in self.caches.items():
                for model, snapshot in cache.metrics.by_model().items():
                    attributes = {"cachecow.cache": name, "cachecow.model": model}
                    yield Observation(getattr(snapshot, counter), attributes)

        return observe

    def _recorder(self, name: str) -> Callable[[str, str, float], None]:
        histogram = self.histogram

        def record(operation: str, model: str, seconds: float) -> None:
            attributes = {
                "cachecow.cache": name,
                "cachecow.operation": operation,
                "cachecow.model": model,
            }
            histogram.record(seconds, attributes)

        return record
