"""The quickstart demo exits 0 and shows its promises, on fakeredis and on a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "quickstart.py"


def run_demo(redis_url: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    proc = subprocess.run(
        [sys.executable, str(DEMO)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_key_lines(out: str) -> None:
    assert "DEMO FAILED" not in out
    for line in [
        # 1-2: a miss queries the database once, a hit not at all
        "ok: 1 DB query, value committed to Redis",
        "ok: 0 more DB queries",
        # 3: a write followed by invalidation is seen at once
        "ok: refetched the new name",
        # 4: the racing reader's stale commit is refused, and the new value wins
        "reader A's caller got {'id': 2, 'email': 'grace@example.com', 'name': 'Grace'}",
        "stale_commits = 1",
        "ok: A's stale commit was refused",
        "raw value key after the race: None",
        "get(User, 'id', 2) -> {'id': 2, 'email': 'grace@example.com', 'name': 'Grace Hopper'}",
        "ok: the next get returns the NEW value",
        "ok: Redis holds the new value, never the old",
        # 5: not found, then a tombstone hit without a query
        "get #1: NotFound(no User with id=999)  (DB queries: +1)",
        "get #2: NotFound(no User with id=999)  (DB queries: +0)",
        "ok: tombstone_hits = 1",
        "All claims held.",
    ]:
        assert line in out, f"missing {line!r} in the demo's output:\n{out}"
    counters = {
        parts[0]: int(parts[1])
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 2 and parts[1].isdigit()
    }
    assert counters["stale_commits"] == 1
    assert counters["tombstone_hits"] == 1
    assert counters["hits"] >= 1


def test_quickstart_with_embedded_fakeredis() -> None:
    out = run_demo(None)
    assert out.startswith("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    assert_key_lines(out)


def test_quickstart_with_real_redis_leaves_nothing_behind(redis_url: str) -> None:
    out = run_demo(redis_url)
    assert out.startswith(f"Redis: {redis_url} (keys under cachecow-demo:")
    assert_key_lines(out)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        assert list(client.scan_iter(match="cachecow-demo:*")) == []
    finally:
        client.close()
