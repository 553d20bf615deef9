"""A cache's options, checked once: each wrong value is a :class:`~cachecow.ConfigurationError`
that names the option, at construction rather than at the first read."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from ._clock import Clock
from .exceptions import ConfigurationError, InvalidLookup
from .keys import model_label
from .metrics import MetricsHook
from .serializers import Serializer


class BusyPolicy(str, enum.Enum):
    """What a reader does when another reader holds the lease of the key it missed."""

    FETCH = "fetch"
    """Fetch at once and return the object without caching it (no waiting, more database load)."""
    WAIT = "wait"
    """Poll for the lease holder's value with backoff for up to ``wait_timeout`` seconds (taking
    the lease over if the holder's expires), then fetch without caching."""


BusyName = Literal["wait", "fetch"]
"""The values of :class:`BusyPolicy` as strings: ``busy="wait"`` or ``busy="fetch"``."""


class CacheOptions(TypedDict, total=False):
    """The keyword-only options of :class:`cachecow.CacheCow` (and ``AsyncCacheCow``), as the
    adapters' constructors take them (``SQLAlchemyCache(client, Session, ttl=60)``): a type
    checker refuses a misspelt option or a value of the wrong type. Each is documented on
    :class:`cachecow.CacheCow`; a test keeps the two lists equal."""

    ttl: float
    ttl_jitter: float
    flag_ttl: float
    tombstone_ttl: float
    max_value_bytes: int | None
    busy: BusyPolicy | BusyName
    wait_timeout: float
    fail_open: bool
    fail_open_log_interval: float
    wait_replicas: int
    wait_replicas_timeout: float
    serializer: Serializer | None
    prefix: str
    clock: Clock | None
    metrics_hook: MetricsHook | None
    ttls: Mapping[Any, float] | None
    near_bytes: int
    near_ttl: float
    near_models: Iterable[Any] | None
    near_shared: bool
    refresh_ahead: float


@dataclass(frozen=True, slots=True)
class Options:
    """The options of :class:`cachecow.CacheCow` that are plain values (see its docstring),
    checked and normalised: seconds as floats, ``busy`` as a :class:`BusyPolicy`. A cache
    keeps them as ``cache.options``."""

    ttl: float = 3600.0
    ttl_jitter: float = 0.1
    flag_ttl: float = 10.0
    tombstone_ttl: float = 30.0
    max_value_bytes: int | None = 1_048_576
    busy: BusyPolicy | str = BusyPolicy.WAIT
    wait_timeout: float = 1.0
    fail_open: bool = False
    fail_open_log_interval: float = 60.0
    wait_replicas: int = 0
    wait_replicas_timeout: float = 0.1
    ttls: Mapping[Any, float] = field(default_factory=dict)
    near_bytes: int = 0
    near_ttl: float = 30.0
    near_models: frozenset[str] | None = None
    near_shared: bool = False
    refresh_ahead: float = 0.0

    def __post_init__(self) -> None:
        checked = {
            "ttl": positive("ttl", self.ttl),
            "ttl_jitter": _fraction("ttl_jitter", self.ttl_jitter),
            "flag_ttl": positive("flag_ttl", self.flag_ttl),
            "tombstone_ttl": positive("tombstone_ttl", self.tombstone_ttl),
            "max_value_bytes": _byte_limit(self.max_value_bytes),
            "busy": _busy(self.busy),
            "wait_timeout": non_negative("wait_timeout", self.wait_timeout),
            "fail_open": bool(self.fail_open),
            "fail_open_log_interval": non_negative(
                "fail_open_log_interval", self.fail_open_log_interval
            ),
            "wait_replicas": _replicas(self.wait_replicas),
            "wait_replicas_timeout": positive("wait_replicas_timeout", self.wait_replicas_timeout),
            "ttls": _model_ttls(self.ttls),
            "near_bytes": _near_bytes(self.near_bytes),
            "near_ttl": positive("near_ttl", self.near_ttl),
            "near_models": labels("near_models", self.near_models),
            "near_shared": bool(self.near_shared),
            "refresh_ahead": _refresh_ahead(self.refresh_ahead, self.ttl_jitter),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def ttl_of(self, label: str) -> float:
        """The TTL of a model's values, by its label: its own in ``ttls``, else ``ttl``."""
        return self.ttls.get(label, self.ttl) if self.ttls else self.ttl

    def refresh_windows(self, ttl: float) -> tuple[int, int]:
        """The refresh windows of a read that caches for ``ttl`` seconds, in milliseconds: a
        hit whose value has at most the first left to live (a tombstone: the second) is
        refreshed (both 0 when ``refresh_ahead`` is off)."""
        ahead = self.refresh_ahead
        return int(ahead * ttl * 1000.0), int(ahead * self.tombstone_ttl * 1000.0)

    @property
    def flag_ttl_ms(self) -> int:
        """``flag_ttl`` in milliseconds (a lease's ``PX``)."""
        return max(1, int(self.flag_ttl * 1000))

    @property
    def tombstone_ttl_ms(self) -> int:
        """``tombstone_ttl`` in milliseconds."""
        return max(1, int(self.tombstone_ttl * 1000))

    @property
    def wait_replicas_ms(self) -> int:
        """``wait_replicas_timeout`` in milliseconds (``WAIT``'s timeout)."""
        return max(1, int(self.wait_replicas_timeout * 1000))


def non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    if value < 0.001:
        raise ConfigurationError(f"{name} must be at least 0.001 seconds (1 ms), got {value!r}")
    return float(value)


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigurationError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def _refresh_ahead(value: float, jitter: float) -> float:
    ahead = _fraction("refresh_ahead", value)
    if ahead and ahead + jitter >= 1.0:
        # A value lives at least ttl * (1 - ttl_jitter): it would be inside its refresh window
        # as soon as it is stored, and refreshed by every read.
        raise ConfigurationError(
            f"refresh_ahead + ttl_jitter must be below 1 (a value may live only "
            f"{1.0 - jitter:g} of ttl), got refresh_ahead={value!r}, ttl_jitter={jitter!r}"
        )
    return ahead


def _byte_limit(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigurationError(
            f"max_value_bytes must be a whole number of bytes > 0, or None for no limit, "
            f"got {value!r}"
        )
    return value


def _busy(value: BusyPolicy | str) -> BusyPolicy:
    try:
        return BusyPolicy(value)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in BusyPolicy)
        raise ConfigurationError(f"busy must be one of {choices}, got {value!r}") from None


def _replicas(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"wait_replicas must be a whole number of replicas, got {value!r}")
    if value < 0:
        raise ConfigurationError(f"wait_replicas must be 0 or more, got {value!r}")
    return value


def _near_bytes(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"near_bytes must be a whole number of bytes >= 0 (0: no near cache), got {value!r}"
        )
    return value


def labels(name: str, models: Iterable[Any] | None) -> frozenset[str] | None:
    """Models (classes or string labels) as a set of labels; ``None`` stays ``None`` (all)."""
    if models is None:
        return None
    if isinstance(models, str) or not isinstance(models, Iterable):
        raise ConfigurationError(f"{name} must be a collection of models, got {models!r}")
    try:
        return frozenset(model_label(model) for model in models)
    except InvalidLookup as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def _model_ttls(ttls: Mapping[Any, float] | None) -> dict[str, float]:
    """``ttls`` keyed by model label (a class becomes ``module.QualName``, as in keys)."""
    if ttls is None:
        return {}
    if not isinstance(ttls, Mapping):
        raise ConfigurationError(f"ttls must map models to seconds, got {ttls!r}")
    checked: dict[str, float] = {}
    for model, seconds in ttls.items():
        try:
            label = model_label(model)
        except InvalidLookup as exc:
            raise ConfigurationError(f"ttls: {exc}") from None
        checked[label] = positive(f"ttls[{label!r}]", seconds)
    return checked
