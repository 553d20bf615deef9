"""The near cache's bookkeeping, without Redis: tickets voided by drops and by the channel's
loss, a commit's value kept through its own message, the byte bound (least recently used out
first), the age bound (``near_ttl``)."""

from __future__ import annotations

import pytest

from cachecow._near import ENTRY_OVERHEAD, SHARED_FACTOR, NearCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def live(max_bytes: int = 10_000, ttl: float = 30.0, clock: Clock | None = None) -> NearCache:
    near = NearCache(max_bytes, ttl, None, clock or Clock())
    near.set_live(True)
    return near


def test_nothing_is_kept_while_the_channel_is_down() -> None:
    near = NearCache(10_000, 30.0, None)
    assert near.ticket() is None
    assert not near.keep("k", near.ticket(), b"v", "M")
    assert near.get("k") is None


def test_a_reply_read_before_a_drop_of_its_key_is_not_kept() -> None:
    near = live()
    ticket = near.ticket()  # the reader sends its request
    near.drop(["k"])  # the invalidation's message is handled before the reply is stored
    assert not near.keep("k", ticket, b"old", "M")
    assert near.get("k") is None
    assert near.keep("k", near.ticket(), b"new", "M")  # a read after the drop is kept
    assert near.get("k") == (b"new", "M")


def test_a_drop_of_another_key_voids_nothing() -> None:
    near = live()
    ticket = near.ticket()
    near.drop(["other"])
    assert near.keep("k", ticket, b"v", "M")


def test_a_drop_after_the_store_removes_the_entry() -> None:
    near = live()
    assert near.keep("k", near.ticket(), b"v", "M")
    near.drop(["k"])
    assert near.get("k") is None
    assert near.size == 0


# -- a commit's value, kept through its own message ---------------------------------------------


def test_a_committed_value_outlives_its_own_message_and_no_other() -> None:
    near = live()
    ticket = near.ticket()  # taken before the commit is sent
    assert near.keep("k", ticket, b"v", "M", committed=True)
    assert near.drop(["k"], heard=True) == ["k"]  # the commit's own write
    assert near.get("k") == (b"v", "M")
    assert near.drop(["k"], heard=True) == []  # a write after the commit
    assert near.get("k") is None


def test_a_committed_value_heard_of_once_is_kept_and_lets_nothing_through() -> None:
    """One message came between the ticket and the store: the commit's own, or a write's before
    the commit. The value is kept; the next message drops it (if the one heard was an earlier
    write's, that next one is the commit's own: an entry lost, nothing stale)."""
    near = live()
    ticket = near.ticket()
    near.drop(["k"], heard=True)
    assert near.keep("k", ticket, b"v", "M", committed=True)
    assert near.drop(["k"], heard=True) == []
    assert near.get("k") is None


@pytest.mark.parametrize("since", ["two messages", "an own drop"])
def test_a_committed_value_is_not_kept_after_more(since: str) -> None:
    """Two messages since the ticket: the second may be a later invalidation's. An own drop
    since the ticket: this process invalidated the key after (or while) it committed."""
    near = live()
    ticket = near.ticket()
    if since == "two messages":
        near.drop(["k"], heard=True)
    near.drop(["k"], heard=since == "two messages")
    assert not near.keep("k", ticket, b"v", "M", committed=True)
    assert near.get("k") is None


def test_the_processes_own_drops_are_never_let_through() -> None:
    """An invalidation of this process right after its commit, before the commit's message
    came: the entry goes at once, and the messages that follow bring nothing back."""
    near = live()
    assert near.keep("k", near.ticket(), b"v", "M", committed=True)
    assert near.drop(["k"]) == []
    assert near.get("k") is None
    near.drop(["k"], heard=True)  # the commit's own message, late
    assert near.keep("k", near.ticket(), b"v2", "M")  # a read after it
    near.drop(["k"], heard=True)  # the invalidation's message
    assert near.get("k") is None


def test_a_committed_value_expires_like_any_other() -> None:
    clock = Clock()
    near = live(ttl=5.0, clock=clock)
    assert near.keep("k", near.ticket(), b"v", "M", committed=True)
    clock.now += 5.1
    assert near.get("k") is None  # dropped by its age: not let through either
    assert near.keep("k", near.ticket(), b"v2", "M")
    near.drop(["k"], heard=True)
    assert near.get("k") is None


@pytest.mark.parametrize("then", ["read", "lost", "evicted"])
def test_only_the_committed_entry_lets_a_message_through(then: str) -> None:
    """A Redis hit's entry stored over it, the channel lost, the entry evicted: the next
    message drops what is there."""
    near = live(max_bytes=2 * (ENTRY_OVERHEAD + 2))
    assert near.keep("k", near.ticket(), b"v", "M", committed=True)
    if then == "read":
        assert near.keep("k", near.ticket(), b"v2", "M")
    elif then == "lost":
        near.set_live(False)
        near.set_live(True)
        assert near.keep("k", near.ticket(), b"v2", "M")
    else:
        for key in ("a", "b"):
            assert near.keep(key, near.ticket(), b"v", "M")
        assert near.get("k") is None
        assert near.keep("k", near.ticket(), b"v2", "M")
    assert near.drop(["k"], heard=True) == []
    assert near.get("k") is None


@pytest.mark.parametrize("event", ["lost", "flushed", "reconnected"])
def test_a_reply_read_before_the_channel_was_lost_or_flushed_is_not_kept(event: str) -> None:
    near = live()
    assert near.keep("old", near.ticket(), b"v", "M")
    ticket = near.ticket()
    if event == "lost":
        near.set_live(False)
    elif event == "flushed":
        near.clear()
    else:  # lost and back before the reply arrived: messages may have been missed meanwhile
        near.set_live(False)
        near.set_live(True)
    assert not near.keep("k", ticket, b"v", "M")
    assert near.get("old") is None
    assert near.size == 0


def test_too_many_remembered_drops_void_every_ticket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cachecow._near._MAX_DROPPED", 3)
    near = live()
    ticket = near.ticket()
    near.drop(["a", "b", "c", "d"])  # past the bound: forgotten, so every older ticket is void
    assert not near.keep("k", ticket, b"v", "M")
    assert near.keep("k", near.ticket(), b"v", "M")


def test_bounded_in_bytes_least_recently_used_out_first() -> None:
    entry = 10 + 1 + ENTRY_OVERHEAD  # ten bytes under a one-character key
    near = live(max_bytes=3 * entry)
    for key in "abc":
        assert near.keep(key, near.ticket(), b"0123456789", "M")
    assert near.get("a") is not None  # a is now the most recently used
    assert near.keep("d", near.ticket(), b"0123456789", "M")
    assert list(near.entries) == ["c", "a", "d"]
    assert near.size == 3 * entry
    assert not near.keep("e", near.ticket(), b"x" * (3 * entry), "M")  # larger than the bound
    assert near.keep("a", near.ticket(), b"0123", "M")  # replaced: counted once
    assert near.size == 2 * entry + 4 + 1 + ENTRY_OVERHEAD


def test_entries_live_near_ttl_at_most() -> None:
    clock = Clock()
    near = live(ttl=5.0, clock=clock)
    assert near.keep("k", near.ticket(), b"v", "M")
    clock.now += 4.9
    assert near.get("k") == (b"v", "M")
    clock.now += 0.2
    assert near.get("k") is None
    assert near.size == 0


def test_models_it_keeps() -> None:
    assert NearCache(1, 1.0, frozenset({"a.B"})).accepts("a.B")
    assert not NearCache(1, 1.0, frozenset({"a.B"})).accepts("a.C")
    assert NearCache(1, 1.0, None).accepts("a.C")


def test_a_shared_object_counts_more_than_its_bytes() -> None:
    near = NearCache(10_000, 30.0, None, Clock(), shared=True)
    near.set_live(True)
    assert near.keep("k", near.ticket(), b"0123456789", "M", {"decoded": True})
    assert near.size == 10 * SHARED_FACTOR + 1 + ENTRY_OVERHEAD
