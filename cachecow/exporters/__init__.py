"""Exporters of a cache's metrics: :mod:`cachecow.exporters.prometheus`
(``pip install 'cachecow-orm[prometheus]'``) and :mod:`cachecow.exporters.otel`
(``pip install 'cachecow-orm[otel]'``). Each is imported on its own, so neither library is
needed by the other, nor by cachecow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachecow._protocol import CacheCowBase

__all__ = ["named_caches"]


def named_caches(caches: Any) -> dict[str, CacheCowBase[Any]]:
    """``{name: cache}`` from one cache (named ``"default"``) or a mapping of names to caches;
    the names tell the caches apart in the ``cache`` label."""
    from cachecow._protocol import CacheCowBase

    named = dict(caches) if isinstance(caches, Mapping) else {"default": caches}
    if not named:
        raise ValueError("no cache to export")
    for name, cache in named.items():
        if not isinstance(name, str) or not isinstance(cache, CacheCowBase):
            raise TypeError(f"expected a cache or a mapping of names to caches, got {caches!r}")
    return named


def missing(extra: str, package: str) -> ImportError:
    """The error of an exporter whose library is not installed: it names the extra."""
    return ImportError(f"this exporter needs {package}: pip install 'cachecow-orm[{extra}]'")
