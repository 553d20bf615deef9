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

import hashlib
import hmac
import json
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
        if orjson is not None:
            # Pass datetimes and dataclasses through to `default`, which refuses them: both
            # backends then accept exactly JSON's own types, whichever is installed.
            self._option = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
        self.backend = "orjson" if orjson is not None else "json"

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as JSON; raises ``TypeError`` for non-JSON types."""
        if self._orjson is not None:
            try:
                data: bytes = self._orjson.dumps(obj, default=_refuse, option=self._option)
            except self._orjson.JSONEncodeError as exc:
                raise TypeError(str(exc)) from exc
            return data
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes."""
        if self._orjson is not None:
            return self._orjson.loads(data)
        return json.loads(data)


def _refuse(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class MsgpackSerializer:
    """MessagePack, through the ``msgpack`` package (``pip install cachecow[msgpack]``)."""

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise ConfigurationError(
                "MsgpackSerializer needs msgpack: pip install 'cachecow[msgpack]'"
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
            self._size = hashlib.new(digest).digest_size
        except ValueError:
            raise ConfigurationError(f"unknown digest {digest!r}") from None
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
