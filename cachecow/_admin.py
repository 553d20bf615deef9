"""What the operators' commands do (``cachecow keys``, ``show``, ``stats``, ``flush``,
``audit``), for any synchronous cache: the command line (:mod:`cachecow.cli`) and the Django
management commands print these reports.

Each report writes its lines through ``write`` (one line a call, no newline) and its progress
through ``progress`` (for standard error). A model is a class (with an application's cache) or
a string label as keys use it (with a bare Redis and a prefix).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._core import CacheCow
from ._lookups import normalized
from ._ops import TOMBSTONE
from ._protocol import _glob_escape
from .exceptions import NotFound
from .keys import Field, normalize_lookup

__all__ = [
    "VALUE_TYPES",
    "AuditResult",
    "audit",
    "audit_report",
    "flush_report",
    "keys_report",
    "parse_field",
    "parse_value",
    "show_report",
    "stats_report",
]

Write = Callable[[str], None]
Progress = Callable[[str], None] | None


class KeysOnly(CacheCow):
    """A cache of a Redis and a prefix alone, for the commands that need no application: it
    builds and deletes keys, and decodes values with the default serializer."""

    def fetch(self, cls: Any, id_field: Any, id_val: Any) -> Any:
        raise NotImplementedError("a cache without its application reads no database")


# -- lookups from the command line --------------------------------------------------------------


def _tuples(value: Any) -> Any:
    """JSON arrays as tuples (lookup values), nested."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _auto(text: str) -> Any:
    try:
        return _tuples(json.loads(text))
    except ValueError:
        return text


VALUE_TYPES: dict[str, Callable[[str], Any]] = {
    "auto": _auto,
    "str": str,
    "int": int,
    "float": float,
    "bool": lambda text: {"true": True, "false": False}[text.lower()],
    "json": lambda text: _tuples(json.loads(text)),
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "date": _dt.date.fromisoformat,
    "datetime": _dt.datetime.fromisoformat,
}
"""How ``--type`` reads a lookup value: ``auto`` is JSON when it parses (``5`` an int, ``"5"``
a string, ``[1, 2]`` a tuple), else the text as a string."""


def parse_value(text: str, kind: str = "auto") -> Any:
    """A lookup value typed on the command line (see :data:`VALUE_TYPES`)."""
    try:
        return VALUE_TYPES[kind](text)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{text!r} is not a {kind} value") from exc


def parse_field(text: str) -> Field:
    """``email``, or ``org_id,user_id`` for a composite lookup."""
    names = tuple(name.strip() for name in text.split(","))
    return names[0] if len(names) == 1 else names


def _shown_lookup(label: str, id_field: Field, id_val: Any) -> str:
    if isinstance(id_field, tuple):
        return f"{label} ({', '.join(id_field)})={id_val!r}"
    return f"{label} {id_field}={id_val!r} ({type(id_val).__name__})"


# -- keys and show ------------------------------------------------------------------------------


def _ttl(pttl: int) -> str:
    return "no ttl" if pttl < 0 else f"ttl {pttl / 1000:.1f} s"


def _key_states(cache: CacheCow, keys: list[str]) -> list[tuple[int, int, bool]]:
    """``(pttl, bytes, tombstone)`` of each key; pttl -2 when absent."""
    pipe = cache.redis.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
        pipe.strlen(key)
        pipe.getrange(key, 0, len(TOMBSTONE) - 1)
    replies = pipe.execute(raise_on_error=False)
    out = []
    for i in range(len(keys)):
        pttl, size, head = replies[3 * i : 3 * i + 3]
        pttl = pttl if isinstance(pttl, int) else -2
        size = size if isinstance(size, int) else 0
        out.append((pttl, size, head == TOMBSTONE and size == len(TOMBSTONE)))
    return out


def _state(pttl: int, size: int, tombstone: bool) -> str:
    if pttl == -2:
        return "absent"
    if tombstone:
        return f"present, tombstone, {_ttl(pttl)}"
    return f"present, {size} bytes, {_ttl(pttl)}"


def _lookup(cache: CacheCow, model: Any, id_field: Field, id_val: Any) -> tuple[Field, Any]:
    return normalized(cache, model, id_field, id_val)


def keys_report(cache: CacheCow, model: Any, id_field: Field, id_val: Any, write: Write) -> None:
    """A lookup's value key and flag key, whether each is present, its size and its TTL."""
    id_field, id_val = _lookup(cache, model, id_field, id_val)
    value_key, flag_key = cache.get_keys(model, id_field, id_val)
    (v_ttl, v_size, v_tomb), (f_ttl, _, _) = _key_states(cache, [value_key, flag_key])
    write(f"lookup  {_shown_lookup(cache.model_label(model), id_field, id_val)}")
    write(f"value   {value_key}  {_state(v_ttl, v_size, v_tomb)}")
    lease = "absent" if f_ttl == -2 else f"present (a read in flight), {_ttl(f_ttl)}"
    write(f"lease   {flag_key}  {lease}")


def fields_of(cache: Any, model: Any, obj: Any) -> list[tuple[str, Any]]:
    """An object's fields to show: an adapter's cached attributes, a mapping's items, or the
    public attributes of the object."""
    if not isinstance(model, str) and hasattr(cache, "model_info"):
        attrs = getattr(cache.model_info(model), "attrs", None)
        if attrs:
            return [(name, getattr(obj, name, None)) for name in attrs]
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if hasattr(obj, "__dict__"):
        return [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
    return [("value", obj)]


def show_report(cache: CacheCow, model: Any, id_field: Field, id_val: Any, write: Write) -> bool:
    """The decoded object a lookup's entry holds, "tombstone", or "not cached". Returns
    whether an entry (object or tombstone) is cached."""
    id_field, id_val = _lookup(cache, model, id_field, id_val)
    value_key, flag_key = cache.get_keys(model, id_field, id_val)
    pipe = cache.redis.pipeline(transaction=False)
    pipe.get(value_key)
    pipe.pttl(value_key)
    pipe.exists(flag_key)
    raw, pttl, leased = pipe.execute()
    write(f"{_shown_lookup(cache.model_label(model), id_field, id_val)}: {value_key}")
    if raw is None:
        write("not cached" + (" (a read in flight holds the lease)" if leased else ""))
        return False
    if raw == TOMBSTONE:
        write(f"tombstone: no such row, cached ({_ttl(pttl)})")
        return True
    write(f"cached object, {len(raw)} bytes, {_ttl(pttl)}")
    try:
        obj = cache.deserialize(model, raw)
    except Exception as exc:
        write(f"undecodable: {type(exc).__name__}: {exc} (a get deletes it and fetches)")
        return True
    for name, value in fields_of(cache, model, obj):
        write(f"  {name}: {value!r}")
    return True


# -- stats --------------------------------------------------------------------------------------


def _pattern(cache: CacheCow, model: Any | None) -> str:
    if model is None:
        return _glob_escape(cache.prefix) + "*"
    return cache.model_keys_pattern(model)


def _scan(cache: CacheCow, pattern: str) -> Iterator[bytes]:
    yield from cache._io.scan(pattern, cache.scan_count)


def _split_key(prefix: str, key: str) -> tuple[str, str, bool]:
    """``(label, fields, is_lease)`` of a default key (see :mod:`cachecow.keys`)."""
    lease = key.endswith(":lease")
    if lease:
        key = key[: -len(":lease")]
    rest = key[len(prefix) :]
    if ":{" in rest:
        rest = rest[: rest.rindex(":{")]
    label, _, fields = rest.rpartition(":")
    return (label, fields, lease) if label else (rest, "?", lease)


@dataclass
class _Counts:
    values: int = 0
    tombstones: int = 0
    leases: int = 0
    value_bytes: int = 0


MEMORY_SAMPLE = 100
"""How many keys ``stats`` asks ``MEMORY USAGE`` of (the first the scan finds), to scale up."""


def stats_report(
    cache: CacheCow, model: Any | None, write: Write, progress: Progress = None
) -> dict[tuple[str, str], _Counts]:
    """How many values, tombstones and leases a model (or every model under the prefix) has,
    by lookup field, found by ``SCAN``; the bytes of the values (``STRLEN``); and the memory
    Redis uses for them, estimated by ``MEMORY USAGE`` of up to :data:`MEMORY_SAMPLE` keys."""
    counts: dict[tuple[str, str], _Counts] = {}
    sampled: list[bytes] = []
    batch: list[bytes] = []
    scanned = 0
    for key in _scan(cache, _pattern(cache, model)):
        scanned += 1
        batch.append(key)
        if len(sampled) < MEMORY_SAMPLE:
            sampled.append(key)
        if len(batch) >= cache.scan_count:
            _count_batch(cache, batch, counts)
            batch = []
            if progress:
                progress(f"scanned {scanned} keys")
    _count_batch(cache, batch, counts)
    where = cache.model_label(model) if model is not None else f"every model under {cache.prefix!r}"
    write(f"{where}: {scanned} keys")
    _write_counts(counts, write)
    memory = _memory(cache, sampled)
    if memory is not None and scanned:
        estimate = memory / len(sampled) * scanned
        write(
            f"memory: about {_size(estimate)} (MEMORY USAGE of {len(sampled)} of "
            f"{scanned} keys, scaled)"
        )
    return counts


def _count_batch(
    cache: CacheCow, batch: list[bytes], counts: dict[tuple[str, str], _Counts]
) -> None:
    """Add the keys of one scan step to ``counts`` (a key gone since the scan is left out)."""
    values = [k for k in batch if not k.endswith(b":lease")]
    states = _key_states(cache, [k.decode() for k in values]) if values else []
    by_key = dict(zip(values, states, strict=True))
    for raw in batch:
        label, fields, lease = _split_key(cache.prefix, raw.decode())
        entry = counts.setdefault((label, fields), _Counts())
        if lease:
            entry.leases += 1
            continue
        pttl, size, tombstone = by_key[raw]
        if pttl == -2:
            continue  # expired or deleted since the scan found it
        if tombstone:
            entry.tombstones += 1
        else:
            entry.values += 1
            entry.value_bytes += size


def _write_counts(counts: dict[tuple[str, str], _Counts], write: Write) -> None:
    """The counts as a table, one row per model and field, then the totals."""
    rows: list[tuple[str, ...]] = [
        ("model", "field", "values", "tombstones", "leases", "value bytes")
    ]
    total = _Counts()
    for (label, fields), c in sorted(counts.items()):
        rows.append((label, fields, *map(str, (c.values, c.tombstones, c.leases, c.value_bytes))))
        total.values += c.values
        total.tombstones += c.tombstones
        total.leases += c.leases
        total.value_bytes += c.value_bytes
    totals = (total.values, total.tombstones, total.leases, total.value_bytes)
    rows.append(("total", "", *map(str, totals)))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        write("  ".join(cells).rstrip())


def _memory(cache: CacheCow, keys: list[bytes]) -> int | None:
    """The sum of ``MEMORY USAGE`` of ``keys`` (None where Redis refuses it, e.g. an ACL)."""
    if not keys:
        return None
    try:
        pipe = cache.redis.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key)
        return sum(r for r in pipe.execute() if isinstance(r, int))
    except Exception:
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- flush --------------------------------------------------------------------------------------


def flush_report(
    cache: CacheCow, model: Any, write: Write, progress: Progress = None, *, settle: bool = True
) -> int:
    """:meth:`~cachecow.CacheCow.invalidate_model`, and how many entries it deleted."""
    label = cache.model_label(model)
    if progress and settle:
        progress(
            f"flushing {label}: a scan, then a wait of {cache.options.flag_ttl:g} s for the "
            "leases in flight to expire, then a second scan (--no-settle skips them)"
        )
    deleted = cache.invalidate_model(model, settle=settle)
    write(f"deleted {deleted} entries of {label}")
    return deleted


# -- audit --------------------------------------------------------------------------------------


@dataclass
class AuditResult:
    """What :func:`audit` found. ``checked`` entries were compared with the database:
    ``fresh`` ones equal to it, ``stale`` ones not (the promise says 0)."""

    label: str
    value_keys: int = 0  # value keys the scan found (values and tombstones)
    sampled: int = 0
    fresh: int = 0
    stale: int = 0
    vanished: int = 0  # deleted or rewritten while audited (an invalidation, an expiry)
    tombstones: int = 0  # not checked: a tombstone names no row
    undecodable: int = 0  # a get deletes them and fetches
    misplaced: int = 0  # an object under a key its own lookups do not reach
    stale_keys: list[tuple[str, str]] = field(default_factory=list)  # (key, lookup)

    @property
    def checked(self) -> int:
        return self.fresh + self.stale

    @property
    def stale_rate(self) -> float:
        return self.stale / self.checked if self.checked else 0.0


def _reservoir(
    cache: CacheCow, pattern: str, n: int, rng: random.Random, progress: Progress
) -> tuple[list[str], int]:
    """Up to ``n`` value keys matching ``pattern``, sampled uniformly (reservoir sampling over
    one ``SCAN``), and how many value keys there are."""
    sample: list[str] = []
    seen = scanned = 0
    for raw in _scan(cache, pattern):
        scanned += 1
        if progress and scanned % 10_000 == 0:
            progress(f"scanned {scanned} keys")
        if raw.endswith(b":lease"):
            continue
        seen += 1
        if len(sample) < n:
            sample.append(raw.decode())
        else:
            slot = rng.randrange(seen)
            if slot < n:
                sample[slot] = raw.decode()
    return sample, seen


def _fresh_bytes(cache: CacheCow, model: Any, id_field: Field, id_val: Any) -> bytes | None:
    """The serialized row the database holds now (None: no such row), read by ``fetch``."""
    try:
        obj = cache.fetch(model, id_field, id_val)
    except NotFound:
        return None
    return None if obj is None else cache.serialize(obj)


def _own_lookup(cache: CacheCow, model: Any, key: str, obj: Any) -> tuple[Field, Any] | None:
    """The lookup of ``obj`` whose value key is ``key`` (None: no lookup of it reaches it)."""
    for id_field, id_val in cache.unique_lookups(obj):
        field_, value = normalize_lookup(id_field, id_val)
        if cache.get_keys(model, field_, value)[0] == key:
            return field_, value
    return None


def _get(cache: CacheCow, key: str) -> bytes | None:
    raw: Any = cache.redis.get(key)
    return None if raw is None else bytes(raw)


_Suspect = tuple[str, bytes, Field, Any, bytes]  # key, cached bytes, lookup, serialized


def audit(
    cache: CacheCow,
    model: Any,
    sample: int,
    *,
    grace: float = 1.0,
    seed: int | None = None,
    progress: Progress = None,
) -> AuditResult:
    """Compare up to ``sample`` cached entries of ``model`` with the database.

    Each sampled value key is read, decoded, matched to the lookup of the object that reaches
    it, and compared (``serialize``) with the row ``fetch`` reads now for that lookup. A
    mismatch is re-checked: the cached bytes are read again after the fetch, and once more
    after ``grace`` seconds and a second fetch (a write's invalidation arrives after its
    commit); only an entry still holding the same bytes and still unequal is stale. One that
    changed or went meanwhile is "vanished". Progress every 100 entries.
    """
    label = cache.model_label(model)
    result = AuditResult(label)
    keys, result.value_keys = _reservoir(
        cache, cache.model_keys_pattern(model), sample, random.Random(seed), progress
    )
    result.sampled = len(keys)
    suspects: list[_Suspect] = []
    for i, key in enumerate(keys, 1):
        suspect = _check_entry(cache, model, key, result)
        if suspect is not None:
            suspects.append(suspect)
        if progress and (i % 100 == 0 or i == len(keys)):
            progress(f"audited {i}/{len(keys)} entries of {label}, {len(suspects)} suspect")
    if suspects and grace > 0:
        if progress:
            progress(f"re-checking {len(suspects)} suspect entries in {grace:g} s")
        time.sleep(grace)
    for suspect in suspects:
        _recheck(cache, model, suspect, result)
    return result


def _check_entry(cache: CacheCow, model: Any, key: str, result: AuditResult) -> _Suspect | None:
    """Count one sampled entry in ``result``; a mismatch to re-check is returned instead."""
    raw = _get(cache, key)
    if raw is None:
        result.vanished += 1
        return None
    if raw == TOMBSTONE:
        result.tombstones += 1
        return None
    try:
        obj = cache.deserialize(model, raw)
        cached = cache.serialize(obj)
    except Exception:
        result.undecodable += 1
        return None
    lookup = _own_lookup(cache, model, key, obj)
    if lookup is None:
        result.misplaced += 1
    elif _fresh_bytes(cache, model, *lookup) == cached:
        result.fresh += 1
    elif _get(cache, key) != raw:  # read after the fetch: invalidated meanwhile
        result.vanished += 1
    else:
        return (key, raw, *lookup, cached)
    return None


def _recheck(cache: CacheCow, model: Any, suspect: _Suspect, result: AuditResult) -> None:
    """Count a suspect entry, once its grace is over: stale only if unchanged and unequal."""
    key, raw, id_field, id_val, cached = suspect
    fresh = _fresh_bytes(cache, model, id_field, id_val)
    if _get(cache, key) != raw:
        result.vanished += 1
    elif fresh == cached:
        result.fresh += 1
    else:
        result.stale += 1
        result.stale_keys.append((key, _shown_lookup(result.label, id_field, id_val)))


def audit_report(result: AuditResult, write: Write) -> None:
    """The lines of an audit's result."""
    write(
        f"audit of {result.label}: {result.sampled} sampled of {result.value_keys} cached entries"
    )
    write(f"checked      {result.checked}")
    write(f"fresh        {result.fresh}")
    write(f"stale        {result.stale}")
    write(f"stale rate   {result.stale_rate:.2%}")
    write(f"vanished     {result.vanished}  (invalidated or expired while audited)")
    write(f"tombstones   {result.tombstones}  (not checked: a tombstone names no row)")
    write(f"undecodable  {result.undecodable}")
    write(f"misplaced    {result.misplaced}  (under a key none of its lookups reaches)")
    for key, lookup in result.stale_keys:
        write(f"stale: {key}  {lookup}")
