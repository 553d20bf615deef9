"""Serializers: how objects become the bytes stored under a value key.

A serializer is any object with ``dumps(obj) -> bytes`` and ``loads(data) -> obj``
(:class:`Serializer`). The value key holds exactly the bytes ``dumps`` returned, so other tools
and languages can read them. ``loads`` may raise anything on bad input: cachecow treats a value
it cannot decode as a miss, deletes it and counts it.

- :class:`JsonSerializer`, the default: orjson when it is installed, the standard library
  otherwise. Both accept the same types (JSON's own: dict, list, str, int, float, bool, None)
  and produce compact UTF-8 JSON that either can read.
- :class:`MsgpackSerializer`: smaller and faster; needs the ``msgpack`` extra.
- :class:`PickleSerializer`: any picklable object, only on explicit opt-in and always signed
  with an HMAC key, so bytes that did not come from a holder of the key are never unpickled.
"""

from __future__ import annotations

import hmac
import json
import math
import pickle
from typing import Any, Protocol, runtime_checkable

from .exceptions import ConfigurationError, SerializationError

__all__ = ["JsonSerializer", "MsgpackSerializer", "PickleSerializer", "Serializer"]


@runtime_checkable
class Serializer(Protocol):
    """Turns objects into bytes and back."""

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise on values this serializer cannot encode."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode bytes produced by :meth:`dumps`; raise on anything else."""
        ...


class JsonSerializer:
    """Compact UTF-8 JSON, through orjson when it is installed (``use_orjson=None``).

    Both backends accept exactly the same values, so whether an object can be cached never
    depends on what happens to be installed: dicts with string keys, lists and tuples, strings,
    integers in orjson's range (-2**63 to 2**64 - 1), finite floats, booleans and ``None``.
    Anything else (a datetime, a UUID, an Enum, a set, NaN, an integer key) is refused with
    ``TypeError`` or ``ValueError``: convert such values in ``serialize`` (adapters do).

    :param use_orjson: ``True`` requires orjson, ``False`` forces the standard library,
        ``None`` (default) picks orjson when importable.
    """

    def __init__(self, *, use_orjson: bool | None = None) -> None:
        orjson: Any = None
        if use_orjson is not False:
            try:
                import orjson
            except ImportError:
                if use_orjson:
                    raise ConfigurationError(
                        "use_orjson=True but orjson is not installed"
                    ) from None
        self._orjson = orjson
        self.backend = "orjson" if orjson is not None else "json"

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as JSON; raises ``TypeError``/``ValueError`` for values outside JSON."""
        _check_json(obj, 0)
        if self._orjson is not None:
            data: bytes = self._orjson.dumps(obj)
            return data
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes."""
        if self._orjson is not None:
            return self._orjson.loads(data)
        return json.loads(data)


_JSON_MAX_DEPTH = 254  # orjson's limit
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _check_json(obj: Any, depth: int) -> None:
    """Refuse anything both JSON backends would not encode to the same text."""
    kind = type(obj)
    if kind is str or obj is None or kind is bool:
        return
    if kind is int:
        if not _INT_MIN <= obj <= _INT_MAX:
            raise TypeError(f"integer {obj} is outside the range JSON values are cached with")
        return
    if kind is float:
        if obj != obj or obj in (math.inf, -math.inf):
            raise ValueError(f"{obj!r} is not a JSON number")
        return
    if depth >= _JSON_MAX_DEPTH:
        raise TypeError(f"nested deeper than {_JSON_MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if type(key) is not str:
                raise TypeError(f"JSON object keys must be str, got {type(key).__name__}")
            _check_json(value, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for value in obj:
            _check_json(value, depth + 1)
        return
    raise TypeError(f"Object of type {kind.__name__} is not JSON serializable")


class MsgpackSerializer:
    """MessagePack, through the ``msgpack`` package (``pip install 'cachecow-orm[msgpack]'``)."""

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise ConfigurationError(
                "MsgpackSerializer needs msgpack: pip install 'cachecow-orm[msgpack]'"
            ) from None
        self._msgpack: Any = msgpack

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as MessagePack."""
        data: bytes = self._msgpack.packb(obj, use_bin_type=True)
        return data

    def loads(self, data: bytes) -> Any:
        """Decode MessagePack bytes (trailing bytes are an error)."""
        return self._msgpack.unpackb(data, raw=False, strict_map_key=False)


class PickleSerializer:
    """Pickle, signed: ``HMAC(key, pickle) + pickle``; a bad signature is never unpickled.

    :param key: the secret HMAC key (at least 16 bytes); share it only with processes that
        may write this cache.
    :param digest: the hashlib name of the HMAC digest (default ``"sha256"``).
    :param protocol: the pickle protocol (default: ``pickle.HIGHEST_PROTOCOL``).
    """

    def __init__(
        self,
        key: bytes,
        *,
        digest: str = "sha256",
        protocol: int = pickle.HIGHEST_PROTOCOL,
    ) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ConfigurationError("PickleSerializer needs a secret key of at least 16 bytes")
        try:
            self._size = hmac.new(key, b"", digest).digest_size
        except (ValueError, TypeError):
            raise ConfigurationError(f"unknown or unusable HMAC digest {digest!r}") from None
        if self._size < 16:
            raise ConfigurationError(f"HMAC digest {digest!r} is shorter than 128 bits")
        self._key = key
        self._digest = digest
        self._protocol = protocol

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, self._digest).digest()

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj`` and prefix the signature."""
        body = pickle.dumps(obj, protocol=self._protocol)
        return self._sign(body) + body

    def loads(self, data: bytes) -> Any:
        """Check the signature, then unpickle; raises :class:`SerializationError` if it fails."""
        signature, body = data[: self._size], data[self._size :]
        if len(signature) != self._size or not hmac.compare_digest(signature, self._sign(body)):
            raise SerializationError("pickle signature mismatch: refusing to unpickle")
        return pickle.loads(body)
