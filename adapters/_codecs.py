"""Exact JSON-safe codecs for column values, by their Python type (shared by the adapters)."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Codec", "codec_for"]


@dataclass(frozen=True)
class Codec:
    """How one column's Python values become JSON-safe values, and back (``None`` aside)."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _plain(name: str) -> Codec:
    def encode(value: Any) -> Any:
        if isinstance(value, (str, int, float, bool, list, dict)):
            return value
        raise TypeError(
            f"column {name!r} holds a {type(value).__name__}, which cachecow's adapter cannot "
            "encode; override serialize/deserialize for this model"
        )

    return Codec(encode, lambda value: value)


def _float_encode(value: float) -> Any:
    return value if math.isfinite(value) else repr(value)  # 'nan', 'inf', '-inf'


def _bytes_encode(value: Any) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def codec_for(python_type: Any, name: str) -> Codec:
    """The codec of a column whose values are ``python_type`` (``None``: JSON values as-is)."""
    if python_type is dt.datetime:
        return Codec(lambda v: v.isoformat(), dt.datetime.fromisoformat)
    if python_type is dt.date:
        return Codec(lambda v: v.isoformat(), dt.date.fromisoformat)
    if python_type is dt.time:
        return Codec(lambda v: v.isoformat(), dt.time.fromisoformat)
    if python_type is dt.timedelta:
        return Codec(
            lambda v: [v.days, v.seconds, v.microseconds],
            lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
        )
    if python_type is decimal.Decimal:
        return Codec(str, decimal.Decimal)
    if python_type is float:
        return Codec(_float_encode, float)
    if python_type is uuid.UUID:
        return Codec(lambda v: v.hex, uuid.UUID)
    if python_type is bytes:
        return Codec(_bytes_encode, base64.b64decode)
    if isinstance(python_type, type) and issubclass(python_type, enum.Enum):
        enum_class = python_type
        return Codec(lambda v: v.name, lambda v: enum_class[v])
    return _plain(name)
