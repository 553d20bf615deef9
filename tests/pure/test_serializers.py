"""Tests of cachecow.serializers: JSON (both backends), MessagePack and signed pickle."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import hmac
import json
import pickle
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
import pytest

import cachecow
from cachecow import (
    TOMBSTONE,
    ConfigurationError,
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    SerializationError,
    Serializer,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

JSON_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -17,
    2**53,
    1.5,
    -0.25,
    "",
    "plain",
    "héllo wörld € \U0001f404",
    'quotes " and \\ backslash\nnewline',
    [],
    {},
    [1, "two", 3.0, None, [True, {"x": []}]],
    {"id": 5, "name": "Ann", "tags": ["a", "b"], "nested": {"k": [1, {"deep": None}]}},
]


@dataclass
class Point:
    x: int
    y: int
    label: str = ""


class Mood(enum.Enum):
    HAPPY = 1


# The proof that a refused pickle is never executed: unpickling an `Evil` calls `_trigger`.
TRIGGERED: list[str] = []


def _trigger() -> str:
    TRIGGERED.append("unpickled")
    return "pwned"


class Evil:
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_trigger, ())


@pytest.fixture(autouse=True)
def _clear_triggered() -> None:
    TRIGGERED.clear()


@pytest.fixture(params=[False, True], ids=["stdlib-json", "orjson"])
def json_serializer(request: pytest.FixtureRequest) -> JsonSerializer:
    return JsonSerializer(use_orjson=request.param)


# ---------------------------------------------------------------------------------------------
# JsonSerializer


def test_json_backends_are_what_was_asked_for() -> None:
    assert JsonSerializer(use_orjson=False).backend == "json"
    assert JsonSerializer(use_orjson=True).backend == "orjson"
    assert JsonSerializer().backend == "orjson"  # orjson is installed in the dev environment


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_json_round_trip(json_serializer: JsonSerializer, value: Any) -> None:
    data = json_serializer.dumps(value)
    assert isinstance(data, bytes)
    assert json_serializer.loads(data) == value
    assert json.loads(data) == value  # standard JSON that any reader understands


def test_json_round_trip_keeps_int_float_and_bool_apart(json_serializer: JsonSerializer) -> None:
    decoded = json_serializer.loads(json_serializer.dumps([1, 1.0, True]))
    assert [type(v) for v in decoded] == [int, float, bool]


def test_json_tuple_becomes_list(json_serializer: JsonSerializer) -> None:
    assert json_serializer.loads(json_serializer.dumps((1, 2))) == [1, 2]


def test_json_output_is_compact_utf8(json_serializer: JsonSerializer) -> None:
    assert json_serializer.dumps({"a": 1, "b": [1, 2], "c": {"d": None}}) == (
        b'{"a":1,"b":[1,2],"c":{"d":null}}'
    )
    assert json_serializer.dumps("é€") == '"é€"'.encode()
    data = json_serializer.dumps(JSON_VALUES[-1])
    assert b" " not in data
    assert b"\n" not in data


def test_json_backends_read_each_other() -> None:
    std = JsonSerializer(use_orjson=False)
    fast = JsonSerializer(use_orjson=True)
    for value in JSON_VALUES:
        assert fast.loads(std.dumps(value)) == value
        assert std.loads(fast.dumps(value)) == value
    # Same compact text for the same value.
    value = {"id": 5, "name": "Ann", "tags": ["a", "é"], "ok": True, "none": None, "r": 0.5}
    assert std.dumps(value) == fast.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(dt.datetime(2024, 1, 1, 12, 0), id="datetime"),
        pytest.param(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), id="aware-datetime"),
        pytest.param(dt.date(2024, 1, 1), id="date"),
        pytest.param(dt.time(12, 0), id="time"),
        pytest.param({1, 2}, id="set"),
        pytest.param(frozenset(), id="frozenset"),
        pytest.param(Point(1, 2), id="dataclass"),
        pytest.param(decimal.Decimal("1.5"), id="decimal"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param(object(), id="object"),
        pytest.param({"nested": [dt.date(2024, 1, 1)]}, id="nested-date"),
    ],
)
def test_json_both_backends_refuse_non_json_types_with_type_error(value: Any) -> None:
    for use_orjson in (False, True):
        with pytest.raises(TypeError):
            JsonSerializer(use_orjson=use_orjson).dumps(value)


def _outcome(serializer: JsonSerializer, value: Any) -> tuple[str, Any]:
    try:
        data = serializer.dumps(value)
    except (TypeError, ValueError):
        return ("refused", None)
    return ("stored", serializer.loads(data))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(uuid.UUID(int=1), id="uuid"),
        pytest.param(Mood.HAPPY, id="enum"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param({1: "int key"}, id="int-dict-key"),
        pytest.param(2**70, id="int-over-64-bits"),
    ],
)
def test_json_backends_agree_on_edge_values(value: Any) -> None:
    std = _outcome(JsonSerializer(use_orjson=False), value)
    fast = _outcome(JsonSerializer(use_orjson=True), value)
    assert std == fast == ("refused", None)


@pytest.mark.parametrize(
    "value",
    [2**64 - 1, -(2**63), {"a": (1, [2.5, None])}, [True, "é", 1e308], {"k": {"n": {}}}],
    ids=repr,
)
def test_json_backends_agree_on_accepted_values(value: Any) -> None:
    std = JsonSerializer(use_orjson=False)
    fast = JsonSerializer(use_orjson=True)
    assert std.loads(std.dumps(value)) == fast.loads(fast.dumps(value))
    assert std.loads(fast.dumps(value)) == fast.loads(std.dumps(value))


def test_json_use_orjson_true_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)  # makes `import orjson` raise ImportError
    with pytest.raises(ConfigurationError, match="orjson"):
        JsonSerializer(use_orjson=True)
    # The default falls back to the standard library, which still works.
    fallback = JsonSerializer()
    assert fallback.backend == "json"
    assert fallback.loads(fallback.dumps({"a": [1]})) == {"a": [1]}


def test_json_loads_rejects_garbage(json_serializer: JsonSerializer) -> None:
    for data in [b"", b"{", b"[1,]", b"\xff\xfe", b"nul"]:
        with pytest.raises(json.JSONDecodeError):  # orjson's error subclasses the stdlib's
            json_serializer.loads(data)


# ---------------------------------------------------------------------------------------------
# MsgpackSerializer


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        -(2**63),
        2**64 - 1,
        1.25,
        "héllo",
        b"",
        b"\x00\xffbinary",
        [],
        {},
        [1, [2, [3, [b"deep", {"k": None}]]]],
        {"bytes": b"\x01\x02", "list": [1, "a", None], "map": {"x": {"y": [True, False]}}},
        {1: "int key", "s": "str key"},
    ],
    ids=repr,
)
def test_msgpack_round_trip(value: Any) -> None:
    serializer = MsgpackSerializer()
    data = serializer.dumps(value)
    assert isinstance(data, bytes)
    decoded = serializer.loads(data)
    assert decoded == value
    assert type(decoded) is type(value)


def test_msgpack_keeps_bytes_and_str_apart() -> None:
    serializer = MsgpackSerializer()
    decoded = serializer.loads(serializer.dumps([b"abc", "abc"]))
    assert decoded == [b"abc", "abc"]
    assert [type(v) for v in decoded] == [bytes, str]


def test_msgpack_loads_rejects_trailing_garbage() -> None:
    serializer = MsgpackSerializer()
    data = serializer.dumps({"a": 1})
    assert serializer.loads(data) == {"a": 1}
    with pytest.raises(msgpack.ExtraData):
        serializer.loads(data + b"\x00")
    with pytest.raises(ValueError, match="extra data"):  # ExtraData is a ValueError
        serializer.loads(data + b"garbage")


def test_msgpack_loads_rejects_truncated_data() -> None:
    serializer = MsgpackSerializer()
    data = serializer.dumps({"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="incomplete"):
        serializer.loads(data[:-1])


def test_msgpack_missing_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ConfigurationError, match="msgpack"):
        MsgpackSerializer()


# ---------------------------------------------------------------------------------------------
# PickleSerializer


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"x" * 15, id="15-bytes"),
        pytest.param("s" * 32, id="str"),
        pytest.param(bytearray(b"x" * 32), id="bytearray"),
        pytest.param(None, id="none"),
    ],
)
def test_pickle_rejects_weak_or_non_bytes_keys(key: Any) -> None:
    with pytest.raises(ConfigurationError, match="16 bytes"):
        PickleSerializer(key)


def test_pickle_accepts_a_16_byte_key() -> None:
    serializer = PickleSerializer(b"x" * 16)
    assert serializer.loads(serializer.dumps([1, 2])) == [1, 2]


def test_pickle_rejects_unknown_digest() -> None:
    with pytest.raises(ConfigurationError, match="no-such-digest"):
        PickleSerializer(KEY, digest="no-such-digest")


@pytest.mark.parametrize("digest", ["shake_128", "shake_256"])
def test_pickle_rejects_variable_length_digests(digest: str) -> None:
    with pytest.raises(ConfigurationError):
        PickleSerializer(KEY, digest=digest)


@pytest.mark.parametrize("digest", ["sha256", "sha512", "sha1", "blake2b"])
def test_pickle_signature_uses_the_digest(digest: str) -> None:
    serializer = PickleSerializer(KEY, digest=digest)
    data = serializer.dumps({"a": 1})
    size = hashlib.new(digest).digest_size
    body = data[size:]
    assert data[:size] == hmac.new(KEY, body, digest).digest()
    assert pickle.loads(body) == {"a": 1}
    assert serializer.loads(data) == {"a": 1}


def test_pickle_round_trip_of_arbitrary_objects() -> None:
    serializer = PickleSerializer(KEY)
    value = {
        "point": Point(3, 4, "p"),
        "when": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        "ids": {uuid.UUID(int=7)},
        "amount": decimal.Decimal("9.99"),
        "mood": Mood.HAPPY,
        "tuple": (1, b"x"),
    }
    data = serializer.dumps(value)
    assert isinstance(data, bytes)
    assert serializer.loads(data) == value


def test_pickle_protocol_option() -> None:
    data = PickleSerializer(KEY, protocol=2).dumps(Point(1, 2))
    body = data[hashlib.sha256().digest_size :]
    assert body[:2] == b"\x80\x02"  # PROTO 2 opcode


def test_pickle_signed_with_the_right_key_does_unpickle_evil() -> None:
    # Control experiment: the crafted payload really runs `_trigger` when it is unpickled.
    serializer = PickleSerializer(KEY)
    assert serializer.loads(serializer.dumps(Evil())) == "pwned"
    assert TRIGGERED == ["unpickled"]


def test_pickle_signed_with_another_key_is_never_unpickled() -> None:
    forged = PickleSerializer(OTHER_KEY).dumps(Evil())
    assert TRIGGERED == []  # pickling alone does not run it
    with pytest.raises(SerializationError, match="signature"):
        PickleSerializer(KEY).loads(forged)
    assert TRIGGERED == []


def test_pickle_raw_unsigned_pickle_is_never_unpickled() -> None:
    raw = pickle.dumps(Evil())
    with pytest.raises(SerializationError):
        PickleSerializer(KEY).loads(raw)
    # Even with a 32-byte pad in front, as if the signature were there.
    with pytest.raises(SerializationError):
        PickleSerializer(KEY).loads(b"\x00" * 32 + raw)
    assert TRIGGERED == []


@pytest.mark.parametrize("where", ["signature-first", "signature-last", "body-first", "body-last"])
def test_pickle_tampered_byte_is_refused(where: str) -> None:
    serializer = PickleSerializer(KEY)
    data = bytearray(serializer.dumps(Evil()))
    index = {"signature-first": 0, "signature-last": 31, "body-first": 32, "body-last": -1}[where]
    data[index] ^= 0x01
    with pytest.raises(SerializationError):
        serializer.loads(bytes(data))
    assert TRIGGERED == []


def test_pickle_appended_or_truncated_bytes_are_refused() -> None:
    serializer = PickleSerializer(KEY)
    data = serializer.dumps([1, 2, 3])
    for bad in (data + b".", data[:-1]):
        with pytest.raises(SerializationError):
            serializer.loads(bad)


@pytest.mark.parametrize("length", [0, 1, 31, 32])
def test_pickle_bytes_no_longer_than_the_signature_are_refused(length: int) -> None:
    serializer = PickleSerializer(KEY)
    with pytest.raises(SerializationError):
        serializer.loads(b"\x80" * length)
    # A prefix of a genuine value, cut inside (or right after) the signature.
    with pytest.raises(SerializationError):
        serializer.loads(serializer.dumps("x")[:length])


def test_serialization_error_is_a_cachecow_error() -> None:
    with pytest.raises(cachecow.CacheCowError):
        PickleSerializer(KEY).loads(b"short")


# ---------------------------------------------------------------------------------------------
# The Serializer protocol and the tombstone


def all_serializers() -> list[Any]:
    return [
        JsonSerializer(use_orjson=False),
        JsonSerializer(use_orjson=True),
        MsgpackSerializer(),
        PickleSerializer(KEY),
    ]


@pytest.mark.parametrize("serializer", all_serializers(), ids=lambda s: type(s).__name__)
def test_serializers_satisfy_the_protocol(serializer: Any) -> None:
    assert isinstance(serializer, Serializer)
    assert isinstance(serializer, cachecow.Serializer)


def test_protocol_rejects_objects_without_both_methods() -> None:
    class DumpsOnly:
        def dumps(self, obj: Any) -> bytes:
            return b""

    class Both(DumpsOnly):
        def loads(self, data: bytes) -> Any:
            return None

    assert not isinstance(object(), Serializer)
    assert not isinstance(DumpsOnly(), Serializer)
    assert isinstance(Both(), Serializer)


@pytest.mark.parametrize("serializer", all_serializers(), ids=lambda s: type(s).__name__)
def test_tombstone_is_never_decodable(serializer: Any) -> None:
    # loads(dumps(x)) succeeds for every x a serializer accepts, so if loads(TOMBSTONE) raises,
    # no output of dumps can ever equal TOMBSTONE.
    with pytest.raises((ValueError, SerializationError)):  # decode errors are ValueErrors
        serializer.loads(TOMBSTONE)
    assert TRIGGERED == []


@pytest.mark.parametrize("serializer", all_serializers(), ids=lambda s: type(s).__name__)
def test_serializer_outputs_are_not_the_tombstone(serializer: Any) -> None:
    values: list[Any] = [*JSON_VALUES, "\x00cachecow:tombstone\x00", TOMBSTONE.decode()]
    for value in values:
        data = serializer.dumps(value)
        assert data != TOMBSTONE
        assert serializer.loads(data) == value


def test_tombstone_specific_errors() -> None:
    with pytest.raises(json.JSONDecodeError):
        JsonSerializer(use_orjson=False).loads(TOMBSTONE)
    with pytest.raises(orjson.JSONDecodeError):
        JsonSerializer(use_orjson=True).loads(TOMBSTONE)
    with pytest.raises(msgpack.ExtraData):
        MsgpackSerializer().loads(TOMBSTONE)
    with pytest.raises(SerializationError):
        PickleSerializer(KEY).loads(TOMBSTONE)
