"""cachecow quickstart: a leased cache-aside cache of SQLite rows, and the race it wins.

Run it from the repository root (needs the ``demo`` extra, ``pip install -e '.[demo]'``)::

    python examples/quickstart.py                                   # embedded fakeredis
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/quickstart.py  # a real Redis server

With a real server, every key lives under a random prefix and is deleted at the end.
The demo checks each claim it prints and exits non-zero if the protocol breaks one.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import redis

import cachecow

Row = dict[str, Any]
USER = "User"  # the model: any class or label; a plain string is used as it is in keys
QUERIES = {  # the only lookups fetch allows, each on a unique column
    "id": "SELECT id, email, name FROM users WHERE id = ?",
    "email": "SELECT id, email, name FROM users WHERE email = ?",
}


class UserCache(cachecow.CacheCow):
    """Caches rows of ``users``; fetch reads each one in a fresh connection of its own."""

    def __init__(self, client: redis.Redis, db_path: Path, **options: Any) -> None:
        super().__init__(client, **options)
        self.db_path = db_path
        self.queries = 0
        self._lock = threading.Lock()
        self.pause_next: tuple[threading.Event, threading.Event] | None = None

    def fetch(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Row | None:
        if not isinstance(id_field, str) or id_field not in QUERIES:
            raise ValueError(f"users can only be looked up by id or email, not {id_field!r}")
        with self._lock:
            self.queries += 1
            pause, self.pause_next = self.pause_next, None
        db = sqlite3.connect(self.db_path)
        try:
            db.row_factory = sqlite3.Row
            row = db.execute(QUERIES[id_field], (id_val,)).fetchone()
        finally:
            db.close()
        if pause is not None:  # step 4: stop right after the read, holding the lease
            read_done, resume = pause
            read_done.set()
            resume.wait(timeout=10)
        return None if row is None else dict(row)


def check(ok: bool, claim: str) -> None:
    if not ok:
        raise SystemExit(f"DEMO FAILED: {claim}")
    print(f"   ok: {claim}")


def step(number: int, title: str, explanation: str) -> None:
    print(f"\n{number}. {title}\n   {explanation}")


def run(client: redis.Redis, prefix: str, db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT)")
    db.executemany(
        "INSERT INTO users VALUES (?, ?, ?)",
        [(1, "ada@example.com", "Ada"), (2, "grace@example.com", "Grace")],
    )
    db.commit()
    cache = UserCache(client, db_path, prefix=prefix)

    def update(user_id: int, name: str) -> None:
        """A writer: commit to the database first, then invalidate every lookup of the row."""
        email = db.execute("SELECT email FROM users WHERE id = ?", (user_id,)).fetchone()[0]
        db.execute("UPDATE users SET name = ? WHERE id = ?", (name, user_id))
        db.commit()
        cache.invalidate(USER, "id", user_id)
        cache.invalidate(USER, "email", email)

    step(1, "A miss", "The first get of user 1 takes the lease, queries SQLite, caches the row.")
    print(f"   get(User, 'id', 1) -> {cache.get(USER, 'id', 1)}  (DB queries: {cache.queries})")
    m = cache.metrics.snapshot()
    print(f"   misses={m.misses} leases={m.leases} commits={m.commits}")
    check(cache.queries == 1 and m.commits == 1, "1 DB query, value committed to Redis")

    step(2, "A hit", "The second get is answered by Redis alone, in one round trip.")
    print(f"   get(User, 'id', 1) -> {cache.get(USER, 'id', 1)}  (DB queries: {cache.queries})")
    check(cache.queries == 1 and cache.metrics.snapshot().hits == 1, "0 more DB queries")

    step(3, "A write", "UPDATE + COMMIT, then invalidate user 1 by id and by email.")
    update(1, "Ada Lovelace")
    user = cache.get(USER, "id", 1)
    print(f"   get(User, 'id', 1) -> {user}  (DB queries: {cache.queries})")
    check(user["name"] == "Ada Lovelace" and cache.queries == 2, "refetched the new name")
    by_email = cache.get(USER, "email", "ada@example.com")
    check(by_email["name"] == "Ada Lovelace", "the email lookup sees the new name too")

    step(
        4,
        "A racing reader whose stale write is refused",
        "Reader A misses user 2 and reads the OLD row; before A commits, a writer updates\n"
        "   the row and invalidates, which voids A's lease. A's commit must then be refused.",
    )
    read_done, resume = threading.Event(), threading.Event()
    cache.pause_next = (read_done, resume)
    result: dict[str, Row] = {}

    def reader_a() -> None:
        result["a"] = cache.get(USER, "id", 2)

    reader = threading.Thread(target=reader_a, daemon=True)
    reader.start()
    check(read_done.wait(timeout=10), "reader A holds the lease and has read the old row")
    update(2, "Grace Hopper")
    print("   writer: UPDATE name='Grace Hopper', COMMIT, invalidate(id=2, email)")
    resume.set()
    reader.join(timeout=10)
    check(not reader.is_alive(), "reader A finished")
    print(f"   reader A's caller got {result.get('a')}")
    check(result.get("a", {}).get("name") == "Grace", "A's caller still gets the row A read")
    stale = cache.metrics.snapshot().stale_commits
    print(f"   stale_commits = {stale}")
    check(stale == 1, "A's stale commit was refused")
    value_key, _flag_key = cache.get_keys(USER, "id", 2)
    raw = client.get(value_key)
    print(f"   raw value key after the race: {raw!r}")
    check(raw is None, "the old value was not cached")
    user = cache.get(USER, "id", 2)
    print(f"   get(User, 'id', 2) -> {user}")
    check(user["name"] == "Grace Hopper", "the next get returns the NEW value")
    raw = client.get(value_key)
    print(f"   raw value key now: {raw!r}")
    check(raw is not None and b"Grace Hopper" in raw, "Redis holds the new value, never the old")

    step(5, "Not found", "No user 999: NotFound, and a short-lived tombstone is cached.")
    new_queries: list[int] = []
    for attempt in (1, 2):
        before = cache.queries
        try:
            cache.get(USER, "id", 999)
        except cachecow.NotFound as exc:
            new_queries.append(cache.queries - before)
            print(f"   get #{attempt}: NotFound({exc})  (DB queries: +{new_queries[-1]})")
    check(new_queries == [1, 0], "NotFound both times; the second from the tombstone, no query")
    check(cache.metrics.snapshot().tombstone_hits == 1, "tombstone_hits = 1")

    step(6, "The counters", "cache.metrics.snapshot().as_dict():")
    counters = cache.metrics.snapshot().as_dict()
    width = max(map(len, counters))
    for name, count in counters.items():
        print(f"   {name:<{width}}  {count:>3}")
    db.close()


def main() -> None:
    url = os.environ.get("REDIS_URL")
    client: redis.Redis
    if url:
        client = cachecow.connect(url)
        prefix = f"cachecow-demo:{secrets.token_hex(4)}:"
        print(f"Redis: {url} (keys under {prefix}, deleted at the end)")
    else:
        import fakeredis  # the demo extra: an in-process Redis that runs Lua through lupa

        client = fakeredis.FakeRedis()
        prefix = "cachecow-demo:"
        print("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(client, prefix, Path(tmp) / "demo.sqlite3")
    finally:
        leftovers = list(client.scan_iter(match=f"{prefix}*"))
        if leftovers:
            client.delete(*leftovers)
        client.close()
    print("\nAll claims held.")


if __name__ == "__main__":
    main()
