"""Tests of cachecow.keys: lookup normalisation, typed value encoding and key building."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import ipaddress
import os
import random
import re
import string
import subprocess
import sys
import tracemalloc
import uuid
from decimal import Decimal
from typing import Any

import pytest
from redis.crc import key_slot

import cachecow
from cachecow._lookups import keyed, keyed_many
from cachecow._protocol import CacheCowBase
from cachecow.keys import (
    build_keys,
    build_many_keys,
    encode_lookup,
    encode_value,
    model_label,
    normalize_lookup,
    same_value,
    validate_prefix,
)

UTC = dt.timezone.utc
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))
MINUS_FIVE = dt.timezone(dt.timedelta(hours=-5))


class Color(enum.Enum):
    RED = 1
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1


class Opaque:
    """No __str__ and no __repr__ of its own: no stable text form."""


class Texty:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class OtherTexty(Texty):
    """Same text form as Texty, different type."""


class Outer:
    class Inner:
        pass


def keys_for(field: Any, value: Any, *, label: str = "app.Model", prefix: str = "cc:") -> tuple:
    field, value = normalize_lookup(field, value)
    return build_keys(prefix, label, field, value)


# ---------------------------------------------------------------------------------------------
# normalize_lookup


def test_normalize_plain_lookup_is_unchanged() -> None:
    assert normalize_lookup("id", 5) == ("id", 5)
    # The value of a plain lookup is passed through whatever it is.
    assert normalize_lookup("pair", (1, 2)) == ("pair", (1, 2))


def test_normalize_composite_sorted_by_field_name() -> None:
    assert normalize_lookup(("b", "a"), (2, 1)) == (("a", "b"), (1, 2))
    assert normalize_lookup(("a", "b"), (1, 2)) == (("a", "b"), (1, 2))
    assert normalize_lookup(("c", "a", "b"), ("C", "A", "B")) == (("a", "b", "c"), ("A", "B", "C"))


def test_normalize_composite_orders_give_one_lookup() -> None:
    assert normalize_lookup(("b", "a"), (2, 1)) == normalize_lookup(("a", "b"), (1, 2))


def test_normalize_one_field_tuple_collapses_to_scalar() -> None:
    assert normalize_lookup(("id",), (5,)) == ("id", 5)
    assert normalize_lookup(["id"], [5]) == ("id", 5)
    # ... and so builds the same keys as the plain lookup.
    assert keys_for(("id",), (5,)) == keys_for("id", 5)


def test_normalize_accepts_lists_and_returns_tuples() -> None:
    field, value = normalize_lookup(["b", "a"], [2, 1])
    assert field == ("a", "b")
    assert value == (1, 2)
    assert type(field) is tuple
    assert type(value) is tuple


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("", 1, id="empty-str-field"),
        pytest.param((), (), id="empty-tuple-field"),
        pytest.param(("a", ""), (1, 2), id="empty-name-in-composite"),
        pytest.param(("a", "a"), (1, 2), id="duplicate-fields"),
        pytest.param(["a", "b", "a"], [1, 2, 3], id="duplicate-fields-list"),
        pytest.param(("a", "b"), (1,), id="too-few-values"),
        pytest.param(("a", "b"), (1, 2, 3), id="too-many-values"),
        pytest.param(("id",), (), id="one-field-no-value"),
        pytest.param(("a", "b"), "12", id="str-value-for-composite"),
        pytest.param(("a", "b"), 12, id="int-value-for-composite"),
        pytest.param(("a", "b"), {"a": 1, "b": 2}, id="dict-value-for-composite"),
        pytest.param(("id",), 5, id="scalar-value-for-one-field-composite"),
        pytest.param(5, 5, id="int-field"),
        pytest.param(None, 5, id="none-field"),
        pytest.param(b"id", 5, id="bytes-field"),
        pytest.param(("a", 5), (1, 2), id="non-str-in-composite"),
        pytest.param({"a"}, (1,), id="set-field"),
    ],
)
def test_normalize_rejects_bad_lookups(field: Any, value: Any) -> None:
    with pytest.raises(cachecow.InvalidLookup):
        normalize_lookup(field, value)


def test_invalid_lookup_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        normalize_lookup(("a", "a"), (1, 2))


# ---------------------------------------------------------------------------------------------
# encode_value


def test_encode_value_keeps_types_distinct() -> None:
    values = [5, "5", 5.0, True, b"5", Decimal("5"), None, Color.RED, Level.LOW, 1, False, 0]
    encodings = [encode_value(v) for v in values]
    assert len(set(encodings)) == len(values), dict(zip(map(repr, values), encodings, strict=True))


def test_encode_value_bool_is_not_int() -> None:
    assert encode_value(1) != encode_value(True)
    assert encode_value(0) != encode_value(False)
    assert encode_value(True) != encode_value(False)


def test_encode_value_is_deterministic_and_a_str() -> None:
    for value in [5, "x", 1.5, None, (1, "a"), b"\x00", Decimal("2.5")]:
        first = encode_value(value)
        assert isinstance(first, str)
        assert encode_value(value) == first


def test_encode_value_negative_zero_is_zero() -> None:
    assert encode_value(-0.0) == encode_value(0.0)
    assert encode_value(0.0) != encode_value(0)


def test_encode_value_float_distinct_values() -> None:
    assert encode_value(0.1) != encode_value(0.10000000000000002)
    assert encode_value(1.0) != encode_value(-1.0)


def test_encode_value_decimal_is_normalised() -> None:
    assert encode_value(Decimal("1.0")) == encode_value(Decimal("1.00"))
    assert encode_value(Decimal("1.0")) == encode_value(Decimal("1"))
    assert encode_value(Decimal("10")) == encode_value(Decimal("1E+1"))
    assert encode_value(Decimal("1.5")) != encode_value(Decimal("1.05"))
    # Non-finite decimals are encodable too.
    assert encode_value(Decimal("Infinity")) != encode_value(Decimal("-Infinity"))


def test_encode_value_str_and_bytes() -> None:
    assert encode_value("") != encode_value(b"")
    assert encode_value("") != encode_value(None)
    assert encode_value(b"ab") == encode_value(bytearray(b"ab")) == encode_value(memoryview(b"ab"))
    assert encode_value("héllo") != encode_value("hello")


def test_encode_value_aware_datetimes_of_one_instant_are_equal() -> None:
    noon_utc = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    same_in_plus_two = dt.datetime(2024, 5, 1, 14, 0, tzinfo=PLUS_TWO)
    same_in_minus_five = dt.datetime(2024, 5, 1, 7, 0, tzinfo=MINUS_FIVE)
    assert noon_utc == same_in_plus_two == same_in_minus_five
    assert encode_value(noon_utc) == encode_value(same_in_plus_two)
    assert encode_value(noon_utc) == encode_value(same_in_minus_five)
    # A different instant, with the same wall-clock time, is another value.
    assert encode_value(noon_utc) != encode_value(dt.datetime(2024, 5, 1, 12, 0, tzinfo=PLUS_TWO))


def test_encode_value_naive_and_aware_datetimes_differ() -> None:
    naive = dt.datetime(2024, 5, 1, 12, 0)
    aware = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert encode_value(naive) != encode_value(aware)


def test_encode_value_date_time_and_datetime_differ() -> None:
    day = dt.date(2024, 5, 1)
    midnight = dt.datetime(2024, 5, 1)
    assert encode_value(day) != encode_value(midnight)
    assert encode_value(day) != encode_value("2024-05-01")
    assert encode_value(dt.time(12, 0)) != encode_value("12:00:00")
    assert encode_value(dt.time(12, 0)) != encode_value(dt.time(12, 1))


def test_encode_value_uuid() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert encode_value(u) == encode_value(uuid.UUID(u.hex))
    assert encode_value(u) != encode_value(str(u))
    assert encode_value(u) != encode_value(u.hex)
    assert encode_value(u) != encode_value(uuid.UUID(int=u.int + 1))


def test_encode_value_enum_differs_from_its_value() -> None:
    assert encode_value(Color.RED) != encode_value(1)
    assert encode_value(Color.GREEN) != encode_value("green")
    assert encode_value(Level.LOW) != encode_value(1)  # an IntEnum is still an enum
    assert encode_value(Level.LOW) != encode_value(Color.RED)  # same value, other enum
    assert encode_value(Color.RED) == encode_value(Color(1))


def test_encode_value_tuples_cannot_collide() -> None:
    assert encode_value(("a", "b")) != encode_value(("ab",))
    assert encode_value(("a", "b")) != encode_value("ab")
    assert encode_value(("ab", "")) != encode_value(("a", "b"))
    assert encode_value(((1, 2), 3)) != encode_value((1, (2, 3)))
    assert encode_value((1, 2, 3)) != encode_value(((1, 2, 3),))
    assert encode_value(()) != encode_value(((),))
    assert encode_value(()) != encode_value(None)
    assert encode_value((None,)) != encode_value(None)
    # A string that spells another value's encoding is still just a string.
    assert encode_value((encode_value("a") + encode_value("b"),)) != encode_value(("a", "b"))
    assert encode_value(("a", "b")) == encode_value(["a", "b"])


def test_encode_value_rejects_objects_without_text_form() -> None:
    with pytest.raises(cachecow.InvalidLookup, match="Opaque"):
        encode_value(Opaque())
    with pytest.raises(cachecow.InvalidLookup):
        encode_value(object())
    with pytest.raises(cachecow.InvalidLookup):
        encode_value((1, Opaque()))


def test_encode_value_refuses_objects_even_with_a_text_form() -> None:
    """An arbitrary __str__ promises nothing about other processes: refused, with a way out."""
    for value in (Texty("abc"), OtherTexty("abc"), (1, Texty("abc"))):
        with pytest.raises(cachecow.InvalidLookup, match=r"Texty: .*coerce_lookup"):
            encode_value(value)


def test_encode_value_keys_known_text_types_as_before() -> None:
    """The few other types with a canonical text form keep the encoding (and so the keys)
    they always had: their qualified type name and their text (the strings below are what
    encode_value gave before it refused other objects)."""
    assert encode_value(dt.timedelta(days=1, microseconds=5)) == (
        "o18:datetime.timedelta21:1 day, 0:00:00.000005"
    )
    assert encode_value(ipaddress.ip_address("10.0.0.1")) == "o21:ipaddress.IPv4Address8:10.0.0.1"
    assert encode_value(ipaddress.ip_network("::/0")) == "o21:ipaddress.IPv6Network4:::/0"
    assert encode_value(ipaddress.ip_interface("10.1.2.3/8")) == (
        "o23:ipaddress.IPv4Interface10:10.1.2.3/8"
    )
    bson = pytest.importorskip("bson")
    oid = bson.ObjectId("65f0c0ffee0000000000beef")
    assert encode_value(oid) == "o22:bson.objectid.ObjectId24:65f0c0ffee0000000000beef"
    assert encode_value(bson.Decimal128("1.50")) == "o26:bson.decimal128.Decimal1284:1.50"
    assert encode_value(oid) != encode_value(str(oid))


def test_encode_lookup_separates_label_fields_and_value() -> None:
    base = encode_lookup("app.Model", "id", 5)
    assert isinstance(base, bytes)
    assert base != encode_lookup("app.Model2", "id", 5)
    assert base != encode_lookup("app.Model", "pk", 5)
    assert base != encode_lookup("app.Model", "id", "5")
    assert encode_lookup("a:b", "c", 1) != encode_lookup("a", "b:c", 1)
    assert encode_lookup("m", ("a", "b"), (1, 2)) != encode_lookup("m", "a+b", (1, 2))


# ---------------------------------------------------------------------------------------------
# build_keys


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag: between the first '{' and the first '}' after it."""
    start = key.index("{")
    end = key.index("}", start + 1)
    return key[start + 1 : end]


def test_build_keys_shape() -> None:
    value_key, flag_key = keys_for("id", 5)
    assert value_key.startswith("cc:app.Model:id:{")
    assert value_key.endswith("}")
    assert flag_key == value_key + ":lease"
    tag = hash_tag(value_key)
    assert hash_tag(flag_key) == tag
    assert re.fullmatch(r"[0-9a-f]{32}", tag), tag  # 128 bits
    assert value_key == f"cc:app.Model:id:{{{tag}}}"


def test_build_keys_composite_readable_part() -> None:
    value_key, _ = keys_for(("b", "a"), (2, 1))
    assert value_key.startswith("cc:app.Model:a+b:{")


def test_build_keys_prefix_first() -> None:
    for prefix in ["", "x:", "cachecow:", "tenant-7/"]:
        value_key, flag_key = keys_for("id", 1, prefix=prefix)
        assert value_key.startswith(prefix + "app.Model:")
        assert flag_key.startswith(prefix + "app.Model:")


@pytest.mark.parametrize(
    ("label", "field"),
    [
        ("my {module}.Model", "id"),
        ("m}odel", "id"),
        ("mod{el", "i}d"),
        ("a b\tc\nd", ("f{1}", "f 2")),
        ("{}", ("{", "}")),
    ],
)
def test_build_keys_braces_and_spaces_never_make_a_second_hash_tag(label: str, field: Any) -> None:
    value = (1, 2) if isinstance(field, tuple) else 1
    field, value = normalize_lookup(field, value)
    value_key, flag_key = build_keys("cc:", label, field, value)
    for key in (value_key, flag_key):
        assert key.count("{") == 1
        assert key.count("}") == 1
        assert not re.search(r"\s", key)
        assert re.fullmatch(r"[0-9a-f]{32}", hash_tag(key))
    assert hash_tag(value_key) == hash_tag(flag_key)


def test_build_keys_sanitised_labels_still_differ() -> None:
    # "a b" and "a_b" read the same in the key, but hash differently.
    assert keys_for("id", 1, label="a b") != keys_for("id", 1, label="a_b")
    assert keys_for("id", 1, label="a{b}") != keys_for("id", 1, label="a_b_")


def test_build_keys_distinct_lookups_distinct_keys() -> None:
    lookups = [
        ("id", 5),
        ("id", "5"),
        ("id", 5.0),
        ("id", True),
        ("id", 6),
        ("pk", 5),
        (("a", "b"), (1, 2)),
        (("a", "b"), (2, 1)),
        (("a", "c"), (1, 2)),
    ]
    keys = {keys_for(field, value) for field, value in lookups}
    assert len(keys) == len(lookups)
    assert keys_for("id", 5, label="app.A") != keys_for("id", 5, label="app.B")
    assert keys_for("id", 5, prefix="a:") != keys_for("id", 5, prefix="b:")


def test_build_keys_composite_order_independent() -> None:
    assert keys_for(("b", "a"), (2, 1)) == keys_for(("a", "b"), (1, 2))
    assert keys_for(["c", "a", "b"], [3, 1, 2]) == keys_for(("a", "b", "c"), (1, 2, 3))


def test_build_keys_equal_values_share_keys() -> None:
    assert keys_for("id", Decimal("1.0")) == keys_for("id", Decimal("1.00"))
    assert keys_for("id", -0.0) == keys_for("id", 0.0)
    assert keys_for("at", dt.datetime(2024, 1, 1, 12, tzinfo=UTC)) == keys_for(
        "at", dt.datetime(2024, 1, 1, 7, tzinfo=MINUS_FIVE)
    )


def test_build_keys_custom_digest() -> None:
    value_key, flag_key = build_keys("p:", "m", "id", 1, digest=lambda data: "X" * 4)
    assert value_key == "p:m:id:{XXXX}"
    assert flag_key == "p:m:id:{XXXX}:lease"


# ---------------------------------------------------------------------------------------------
# Redis Cluster slots


def crc16_xmodem(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def cluster_slot(key: bytes) -> int:
    """The Redis Cluster slot of a key (cluster spec: hash tags, CRC16-XMODEM mod 16384)."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end != -1 and end != start + 1:
            key = key[start + 1 : end]
    return crc16_xmodem(key) % 16384


def test_crc16_implementation_matches_spec_and_redis_py() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the check value in the cluster spec
    assert cluster_slot(b"foo{bar}baz") == cluster_slot(b"bar") == key_slot(b"foo{bar}baz")
    # An empty tag "{}" does not count: the whole key is hashed.
    empty_tag = b"foo{}{bar}"
    assert cluster_slot(empty_tag) == key_slot(empty_tag) == crc16_xmodem(empty_tag) % 16384
    for text in ["", "a", "user:1000", "{user1000}.following", "x{y}z{w}"]:
        assert cluster_slot(text.encode()) == key_slot(text.encode())


def random_value(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randrange(-(10**12), 10**12)
    if kind == 1:
        return "".join(rng.choices(string.printable + "{}é€", k=rng.randrange(0, 20)))
    if kind == 2:
        return rng.random() * 1e6
    if kind == 3:
        return uuid.UUID(int=rng.getrandbits(128))
    if kind == 4:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 10)))
    if kind == 5:
        return Decimal(rng.randrange(10**6)) / Decimal(100)
    return None


def test_value_and_flag_keys_share_a_cluster_slot() -> None:
    rng = random.Random(20240501)
    slots = set()
    for n in range(400):
        label = rng.choice(["app.User", "my {mod}.Model", "shop.Order Line", "x"])
        if n % 3 == 0:
            field: Any = ("tenant", "id")
            value: Any = (random_value(rng), random_value(rng))
        else:
            field, value = rng.choice(["id", "email", "sl{ug}"]), random_value(rng)
        field, value = normalize_lookup(field, value)
        value_key, flag_key = build_keys("cachecow:", label, field, value)
        slot = cluster_slot(value_key.encode())
        assert cluster_slot(flag_key.encode()) == slot
        assert key_slot(value_key.encode()) == key_slot(flag_key.encode()) == slot
        # The slot comes from the 128-bit hash alone.
        assert slot == crc16_xmodem(hash_tag(value_key).encode()) % 16384
        slots.add(slot)
    # The hash tag spreads lookups over the slots (not one constant tag).
    assert len(slots) > 350


# ---------------------------------------------------------------------------------------------
# validate_prefix


@pytest.mark.parametrize("prefix", ["", "cachecow:", "app/v2:", "a-b_c.d:"])
def test_validate_prefix_accepts(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    ["{", "}", "a{b}:", "cache cow:", " ", "tab\t", "new\nline", "x}", None, b"cc:", 5, ["cc:"]],
)
def test_validate_prefix_rejects(prefix: Any) -> None:
    with pytest.raises(cachecow.ConfigurationError):
        validate_prefix(prefix)


# ---------------------------------------------------------------------------------------------
# model_label


def test_model_label_of_a_class() -> None:
    assert model_label(Opaque) == f"{Opaque.__module__}.Opaque"
    assert model_label(dt.datetime) == "datetime.datetime"
    assert model_label(uuid.UUID) == "uuid.UUID"


def test_model_label_of_a_nested_class() -> None:
    assert model_label(Outer.Inner) == f"{Outer.__module__}.Outer.Inner"


def test_model_label_of_a_string() -> None:
    assert model_label("users") == "users"
    assert model_label("app.User") == "app.User"


@pytest.mark.parametrize(
    "model",
    [
        pytest.param("", id="empty-string"),
        pytest.param(5, id="int"),
        pytest.param(None, id="none"),
        pytest.param(b"users", id="bytes"),
        pytest.param(Opaque(), id="instance"),
        pytest.param(Color.RED, id="enum-member"),
    ],
)
def test_model_label_rejects(model: Any) -> None:
    with pytest.raises(cachecow.InvalidLookup):
        model_label(model)


def test_equal_decimals_and_aware_times_share_an_encoding() -> None:
    assert (
        encode_value(Decimal("-0")) == encode_value(Decimal("0")) == encode_value(Decimal("0.00"))
    )
    noon_utc = dt.time(12, 0, tzinfo=UTC)
    same_in_plus_two = dt.time(14, 0, tzinfo=PLUS_TWO)
    assert encode_value(noon_utc) == encode_value(same_in_plus_two)
    assert encode_value(noon_utc) != encode_value(dt.time(12, 0))  # naive stays distinct


def test_model_label_refuses_functions() -> None:
    def not_a_model() -> None:
        pass

    with pytest.raises(cachecow.InvalidLookup, match="a class or a string"):
        model_label(not_a_model)


def test_build_many_keys_equals_build_keys() -> None:
    values = [1, "1", 1.0, True, None, b"\x00", Decimal("2.50"), (1, "a"), dt.date(2024, 1, 2)]
    values += [-12, 10**30, "", "é🙂", "a:b{c}"]  # the fast paths of ints and strings
    assert build_many_keys("p:", "app.User", "id", values) == [
        build_keys("p:", "app.User", "id", v) for v in values
    ]
    composite = [(1, 2), (3, 4)]
    assert build_many_keys("p:", "m", ("a", "b"), composite) == [
        build_keys("p:", "m", ("a", "b"), v) for v in composite
    ]


def test_memoised_keys_keep_typed_lookups_apart() -> None:
    cache = CacheCowBase(None)
    first = {v: cache.get_keys("m", "id", v) for v in (1, True, 1.0, "1", (1, 2), (True, 2))}
    again = {v: cache.get_keys("m", "id", v) for v in (1, True, 1.0, "1", (1, 2), (True, 2))}
    assert first == again
    assert cache.get_keys("m", "id", 1) != cache.get_keys("m", "id", True)
    assert cache.get_keys("m", "id", (1, 2)) != cache.get_keys("m", "id", (True, 2))
    assert cache.get_keys("m", "id", 1) == build_keys("cachecow:", "m", "id", 1)
    assert cache.get_keys("m", "id", True) == build_keys("cachecow:", "m", "id", True)


def test_key_memo_is_bounded() -> None:
    cache = CacheCowBase(None)
    cache.key_memo_size = 10
    for i in range(35):
        assert cache.get_keys("m", "id", i) == build_keys("cachecow:", "m", "id", i)
    assert len(cache._key_memo) <= 10


class Counting(CacheCowBase[Any]):
    """Converts "5" to 5, as an adapter does for an integer key, and counts its calls."""

    def __init__(self) -> None:
        super().__init__(None)
        self.calls = collections.Counter[str]()

    def check_lookup(self, cls: Any, id_field: Any) -> None:
        self.calls["check"] += 1

    def coerce_lookup(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        self.calls["coerce"] += 1
        return int(id_val) if isinstance(id_val, str) and id_val.isdigit() else id_val


def test_a_lookup_is_converted_once_and_checked_at_every_call() -> None:
    cache = Counting()
    first = keyed(cache, "m", "id", "5")
    for _ in range(3):
        assert keyed(cache, "m", "id", "5") == first
    assert first == (("m", "id", 5), build_keys("cachecow:", "m", "id", 5))
    assert cache.calls == {"coerce": 1, "check": 4}
    # Each form of a lookup is remembered apart: 5, "5" and True are three calls' arguments.
    assert keyed(cache, "m", "id", 5) == first
    assert keyed(cache, "m", "id", True)[0] == ("m", "id", True)
    assert keyed(cache, "m", "id", "x")[0] == ("m", "id", "x")
    # Composite fields are remembered in canonical order; a list of fields is not remembered.
    assert keyed(cache, "m", ("b", "a"), (1, 2))[0] == ("m", ("a", "b"), (2, 1))
    converted = cache.calls["coerce"]
    assert keyed(cache, "m", ("b", "a"), (1, 2))[0] == ("m", ("a", "b"), (2, 1))
    assert keyed(cache, "m", ["b", "a"], (1, 2))[0] == ("m", ("a", "b"), (2, 1))
    assert keyed(cache, "m", ["b", "a"], (1, 2))[0] == ("m", ("a", "b"), (2, 1))
    assert cache.calls["coerce"] == converted + 2
    # A bad lookup is refused at every call, never remembered.
    for _ in range(2):
        with pytest.raises(cachecow.InvalidLookup):
            keyed(cache, "m", "id", [1])


def test_a_batch_shares_the_memo_of_single_lookups() -> None:
    """keyed_many converts and hashes only the lookups the memo does not hold, keeps their
    order and duplicates, and checks the field once per call."""
    cache = Counting()
    keyed(cache, "m", "id", "5")
    field, values, keys = keyed_many(cache, "m", "id", ["5", "6", 5, "6", True])
    assert (field, values) == ("id", [5, 6, 5, 6, True])
    assert keys == [build_keys("cachecow:", "m", "id", v) for v in values]
    assert cache.calls == {"coerce": 5, "check": 2}  # "5" was remembered; the rest converted
    assert keyed_many(cache, "m", "id", ["6", "5", 5]) == (
        "id",
        [6, 5, 5],
        [keys[1], keys[0], keys[0]],
    )
    assert cache.calls == {"coerce": 5, "check": 3}
    assert keyed(cache, "m", "id", "6")[0] == ("m", "id", 6)  # remembered by the batch
    assert cache.calls["coerce"] == 5
    assert keyed_many(cache, "m", ("b", "a"), [(1, 2)])[:2] == (("a", "b"), [(2, 1)])
    assert keyed_many(cache, "m", ["b", "a"], [(1, 2)])[:2] == (("a", "b"), [(2, 1)])
    assert keyed_many(cache, "m", "id", []) == ("id", [], [])
    with pytest.raises(cachecow.InvalidLookup):
        keyed_many(cache, "m", "id", "56")


def test_a_cache_with_its_own_keys_is_asked_for_them_at_every_call() -> None:
    class Versioned(CacheCowBase[Any]):
        version = 1

        def get_keys(self, cls: Any, id_field: Any, id_val: Any) -> tuple[str, str]:
            key = f"v{self.version}:{cls}:{id_field}:{{{id_val}}}"
            return key, key + ":lease"

    cache = Versioned(None)
    assert keyed(cache, "m", "id", 1)[1][0] == "v1:m:id:{1}"
    cache.version = 2  # a namespace bump: every key changes
    assert keyed(cache, "m", "id", 1)[1][0] == "v2:m:id:{1}"
    assert cache._lookup_memo == {}


def test_lookup_memo_is_bounded() -> None:
    cache = CacheCowBase(None)
    cache.key_memo_size = 10
    for i in range(35):
        assert keyed(cache, "m", "id", str(i))[1] == build_keys("cachecow:", "m", "id", str(i))
    assert len(cache._lookup_memo) <= 10


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (5, 5, True),
        (5, "5", False),
        (1, True, False),
        (True, True, True),
        (0.0, -0.0, True),
        (Decimal("1.0"), Decimal("1.00"), True),
        (Decimal("1"), 1, False),
        ("a", "a", True),
        (b"a", b"a", True),
        ((1, "a"), (1, "a"), True),
        ((1, "a"), (True, "a"), False),
    ],
)
def test_same_value_agrees_with_the_typed_encoding(a: Any, b: Any, same: bool) -> None:
    assert same_value(a, b) is same
    assert (encode_value(a) == encode_value(b)) is same


# ---------------------------------------------------------------------------------------------
# Lookup values with no process-independent encoding are refused


class Tags(frozenset[str]):
    """A frozenset subclass with a text form of its own: still a set."""

    def __str__(self) -> str:
        return ",".join(sorted(self))


UNKEYABLE = [
    pytest.param(
        frozenset({"a", "b"}), "frozenset", r"order.*differs between processes", id="frozenset"
    ),
    pytest.param({"a", "b"}, "set", r"tuple\(sorted\(values\)\)", id="set"),
    pytest.param(frozenset(), "frozenset", "tuple in a fixed order", id="empty-frozenset"),
    pytest.param(Tags({"a"}), "Tags", "tuple in a fixed order", id="frozenset-subclass"),
    pytest.param({"b": 1, "a": 2}, "dict", "tuple of field names", id="dict"),
    pytest.param(
        collections.OrderedDict(a=1), "collections.OrderedDict", "mapping", id="ordered-dict"
    ),
    pytest.param({}.keys(), "dict_keys", "tuple in a fixed order", id="dict-keys"),
    pytest.param(object(), "object", "no stable text form", id="object"),
    pytest.param(Opaque(), "Opaque", "no stable text form", id="opaque"),
    pytest.param(Texty("x"), "Texty", "no stable text form", id="object-with-str"),
    pytest.param(1 + 2j, "complex", "no stable text form", id="complex"),
    pytest.param((1, frozenset({"a"})), "frozenset", "tuple in a fixed order", id="in-a-tuple"),
    pytest.param(("a", {"k": 1}), "dict", "mapping", id="dict-in-a-tuple"),
]


@pytest.mark.parametrize(("value", "type_name", "advice"), UNKEYABLE)
def test_unkeyable_values_are_refused_everywhere_keys_are_built(
    value: Any, type_name: str, advice: str
) -> None:
    cache = CacheCowBase(None)
    attempts = [
        lambda: encode_value(value),
        lambda: encode_lookup("m", "id", value),
        lambda: build_keys("p:", "m", "id", value),
        lambda: build_many_keys("p:", "m", "id", [1, value]),
        lambda: cache.get_keys("m", "id", value),
        lambda: cache.get_keys("m", "id", value),  # and never memoised
    ]
    for attempt in attempts:
        with pytest.raises(cachecow.InvalidLookup, match=advice) as raised:
            attempt()
        message = str(raised.value).replace(f"{__name__}.", "")
        assert message.startswith(f"cannot build a cache key from a {type_name}: ")
    assert cache._key_memo == {}
    assert same_value(value, value) is False  # verify() never accepts such a value either


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = (value,)
    return value


def test_nesting_up_to_the_limit_is_keyed() -> None:
    assert cachecow.keys.MAX_NESTING == 4
    deepest = nested(4)
    assert encode_value(deepest) == "(1:(1:(1:(1:i1:1))))"
    assert build_many_keys("p:", "m", "v", [deepest]) == [build_keys("p:", "m", "v", deepest)]
    assert encode_value((1, (2, (3, (4, "x"))))) != encode_value((1, (2, (3, (4, "y")))))


@pytest.mark.parametrize("depth", [5, 6, 3000, 100_000])
def test_deeper_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    value = nested(depth)
    cache = CacheCowBase(None)
    for attempt in (
        lambda: encode_value(value),
        lambda: build_keys("p:", "m", "v", value),
        lambda: build_many_keys("p:", "m", "v", [value]),
        lambda: cache.get_keys("m", "v", value),
    ):
        with pytest.raises(cachecow.InvalidLookup, match="nested more than 4 deep"):
            attempt()


def test_a_list_that_holds_itself_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(cachecow.InvalidLookup, match="nested more than 4 deep"):
        encode_value(loop)


def test_enum_values_count_toward_the_nesting_limit() -> None:
    deep = enum.Enum("Deep", {"X": nested(5)})
    with pytest.raises(cachecow.InvalidLookup, match="nested"):
        encode_value(deep.X)
    with pytest.raises(cachecow.InvalidLookup, match="nested"):
        encode_value((deep.X,))


def test_decimal_encoding_ignores_the_threads_context() -> None:
    """Decimals were encoded in the thread's context: rounded to 28 digits (distinct values
    shared a key), or trapped, depending on the process's settings."""
    long = Decimal("1.0000000000000000000000000001")  # 29 digits
    assert encode_value(long) != encode_value(Decimal(1))
    big = Decimal("123456789012345678901234567890123")
    assert encode_value(big) != encode_value(big + 1)
    assert encode_value(Decimal("1E-999999999")) != encode_value(Decimal(0))
    tiny_context = decimal.Context(prec=3, traps=[decimal.Inexact, decimal.Rounded])
    expected = [encode_value(Decimal(s)) for s in ("123.4500", "-0.00", "1E+30", str(long))]
    with decimal.localcontext(tiny_context):
        got = [encode_value(Decimal(s)) for s in ("123.4500", "-0.00", "1E+30", str(long))]
    assert got == expected
    assert expected[:3] == ["d6:123.45", "d1:0", "d5:1E+30"]


@pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"), reason="no int digit limit")
def test_ints_past_the_digit_limit_are_refused() -> None:
    huge = 10 ** (sys.get_int_max_str_digits() + 10)
    for attempt in (
        lambda: encode_value(huge),
        lambda: build_keys("p:", "m", "id", huge),
        lambda: build_many_keys("p:", "m", "id", [1, huge]),
    ):
        with pytest.raises(cachecow.InvalidLookup, match="more digits"):
            attempt()


KEY_IN_A_FRESH_PROCESS = """
import sys
from cachecow import InvalidLookup
from cachecow.keys import build_keys
values = [f"tag-{i}" for i in range(24)]
print(list(frozenset(values)) == sorted(frozenset(values)), list(frozenset(values))[:3])
print(build_keys("p:", "m", "tags", tuple(sorted(frozenset(values))))[0])
try:
    build_keys("p:", "m", "tags", frozenset(values))
except InvalidLookup:
    print("refused")
"""


def test_frozenset_keys_are_refused_because_set_order_differs_between_processes() -> None:
    """Two processes with different hash seeds iterate one frozenset in different orders, so a
    key built from its order would differ between them (the refusal's motivation); a tuple in
    sorted order has one key in both, and the frozenset itself is refused in both."""
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", KEY_IN_A_FRESH_PROCESS],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs.append(run.stdout.splitlines())
    first, second = outputs
    assert first[0] != second[0]  # the iteration orders differ
    assert first[1] == second[1]  # the sorted tuple's key does not
    assert first[2] == second[2] == "refused"


# ---------------------------------------------------------------------------------------------
# The key memo keeps no large value alive


def test_memo_keys_only_small_plain_values() -> None:
    limit = cachecow.keys.MEMO_MAX_SIZE
    assert limit == 256
    memo_key = cachecow.keys.memo_key
    assert memo_key("m", "id", "x" * limit) is not None
    assert memo_key("m", "id", "x" * (limit + 1)) is None
    assert memo_key("m", "id", b"x" * limit) is not None
    assert memo_key("m", "id", b"x" * (limit + 1)) is None
    assert memo_key("m", "id", 10**70) is not None
    assert memo_key("m", "id", -(10**70)) is not None
    assert memo_key("m", "id", 10**100) is None
    assert memo_key("m", "id", (1, "x" * 100, "y" * 156)) is not None
    assert memo_key("m", "id", (1, "x" * 100, "y" * 157)) is None
    assert memo_key("m", "id", (1, 10**100)) is None
    assert memo_key("m", "id", tuple(range(16))) is not None
    assert memo_key("m", "id", tuple(range(17))) is None
    assert memo_key("m", "id", (1, (2,))) is None
    assert memo_key("m", "id", Decimal(1)) is None
    assert memo_key("m", "id", uuid.UUID(int=5)) is not None
    # Types stay apart in the memo as in the keys.
    assert memo_key("m", "id", (1, "a")) != memo_key("m", "id", (True, "a"))


def test_large_lookups_do_not_grow_the_key_memo() -> None:
    """3,000 lookups of 100 KB strings once kept ~300 MB alive in the memo; now nothing."""
    cache = CacheCowBase(None)
    small = [cache.get_keys("app.Doc", "id", i) for i in range(100)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        start, _ = tracemalloc.get_traced_memory()
        for i in range(3000):
            body = f"{i:06d}" + "x" * 100_000
            keys = cache.get_keys("app.Doc", "body", body)
            if i % 500 == 0:
                assert keys == build_keys("cachecow:", "app.Doc", "body", body)
            del body
        end, _ = tracemalloc.get_traced_memory()
        grown = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()
    assert len(cache._key_memo) == 100  # the small lookups only
    assert end - start < 1_000_000, grown[:5]  # was ~300 MB
    # The small lookups are still memoised: the very same tuple comes back.
    assert all(cache.get_keys("app.Doc", "id", i) is small[i] for i in range(100))


def test_memo_entries_are_small_even_when_full() -> None:
    """At its entry bound, the memo holds at most a few hundred bytes per entry."""
    cache = CacheCowBase(None)
    cache.key_memo_size = 1000
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for i in range(1000):
            cache.get_keys("app.Doc", "slug", f"{i:04d}" + "s" * 252)  # the largest memoised
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache._key_memo) == 1000
    assert (end - start) / 1000 < 1500
