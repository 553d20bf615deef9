"""The MongoEngine example exits 0, shows its claims and leaves no keys behind.

Both runs use mongomock and run (a) fakeredis because those are the example's embedded defaults:
with no MONGODB_URL and no REDIS_URL it needs no service at all, and no MongoDB server can be
installed on this machine (mongomock is an in-process fake of one). Run (b) points the example
at the plugin's private redis-server and checks that nothing stays under its random key prefix.
"""

from __future__ import annotations

import re

import pytest
import redis

from tests.support.examples import ROOT, run_script

pytest.importorskip("mongoengine", reason="the mongoengine extra is not installed")
pytest.importorskip("mongomock", reason="mongomock (the example's default MongoDB) is missing")

EXAMPLE = ROOT / "examples" / "mongoengine_app.py"


def run_example(**env_vars: str) -> str:
    return run_script(EXAMPLE, without=("REDIS_URL", "MONGODB_URL"), **env_vars)


def assert_key_lines(out: str) -> None:
    assert "EXAMPLE FAILED" not in out
    for line in [
        "MongoDB: mongomock, in process (set MONGODB_URL to use a real server)",
        # 1: the original README's example: a miss queries MongoDB, a hit does not
        "ok: the miss ran 1 MongoDB query and cached the document",
        "ok: the second get: a hit in Redis, 0 MongoDB queries",
        "ok: after cache.invalidate(...), the next get queries MongoDB again",
        # 2: by ObjectId, and by the unique_with pair in any order
        "ok: the ObjectId finds it",
        "ok: ('slug', 'site') is a hit too",
        # 3: a non-unique lookup is refused, naming the valid ones
        "InvalidLookup: BlogPost: 'likes' is not a unique lookup; "
        "valid lookups are 'id', 'title', (site, slug)",
        # 4: a watched save invalidates the old and the new title
        "post.title = 'Hello, World'; post.save() -> 4 lookups invalidated",
        "ok: the old title: BlogPost.DoesNotExist",
        "ok: the new title finds the post",
        # 5: a queryset update() invalidates every document it touches
        "ok: 10 misses cost one MongoDB query ($in)",
        "BlogPost.objects(site='news').update(inc__likes=1) -> 30 lookups invalidated",
        "ok: all 10 have 1 like",
        "ok: and still served from Redis",
        # 6: objects.get() of a unique lookup comes from the cache
        "ok: a hit, 0 queries",
        "ok: a filtered queryset's get() goes to MongoDB",
        # 7: deletes
        "ok: doomed.delete(): by id, DoesNotExist",
        "ok: objects(...).delete(): DoesNotExist",
        # 8: exact round trips
        "ok: to_mongo() of the cached document equals the stored document",
        "ok: the author is kept as an id, not loaded",
        "All claims held.",
    ]:
        assert line in out, f"missing {line!r} in the example's output:\n{out}"
    counters = {
        parts[0]: int(parts[1])
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 2 and parts[1].isdigit()
    }
    assert counters["hits"] >= 5
    assert counters["stale_commits"] == 0
    assert counters["invalidations"] >= 34


def test_example_with_no_services() -> None:
    out = run_example()
    assert out.startswith("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    assert_key_lines(out)


def test_example_with_real_redis_leaves_no_keys(redis_url: str) -> None:
    out = run_example(REDIS_URL=redis_url)
    match = re.match(
        rf"Redis: {re.escape(redis_url)} \(keys under (cachecow-mongo:[0-9a-f]+:),", out
    )
    assert match, f"unexpected first line:\n{out}"
    assert_key_lines(out)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        assert list(client.scan_iter(match=f"{match.group(1)}*")) == []
    finally:
        client.close()
