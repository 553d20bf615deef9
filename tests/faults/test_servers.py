"""The test servers themselves: ports that a reconnecting client cannot self-connect to, and a
picked port that was taken meanwhile is replaced."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator

import pytest
import redis

from cachecow.testing import RedisServer, free_port
from cachecow.testing.server import _bindable, _ephemeral_range, free_cluster_port


def test_free_ports_lie_outside_the_ephemeral_range() -> None:
    # A client reconnecting to a dead port of the ephemeral range can connect to itself (a CI
    # run failed so: redis-py read back its own HELLO). Ports outside the range cannot.
    low, high = _ephemeral_range()
    for _ in range(200):
        port = free_port()
        assert not low <= port <= high
        node = free_cluster_port()
        assert not low <= node <= high
        assert not low <= node + 10000 <= high
        assert node + 10000 <= 65535


def test_a_client_reconnecting_to_a_dead_free_port_never_reaches_itself() -> None:
    # Linux hands connect() source ports in turn over the ephemeral range (even ones first), so
    # reconnecting about as many times as the range is wide meets a dead even port of that
    # range as its own source port: measured here, port 45678 after 21311 tries (0.31 s), and
    # so a CI run met cluster node port 36862. Ports outside the range are never met.
    low, high = _ephemeral_range()
    node = free_cluster_port()
    for port in (free_port(), node, node + 10000):
        for _ in range(2 * (high - low + 1)):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(("127.0.0.1", port))
                except ConnectionRefusedError:
                    continue
                pytest.fail(f"connected to {sock.getpeername()} from {sock.getsockname()}")


def test_a_picked_port_taken_meanwhile_is_replaced() -> None:
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", free_port()))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks: Iterator[int] = iter([taken, free_port()])
    server = RedisServer(pick_port=lambda: next(picks))
    try:
        server.start()
        assert server.port != taken
        with redis.Redis(host="127.0.0.1", port=server.port) as client:
            assert client.info("server")["process_id"] == server.process.pid  # type: ignore[union-attr]
    finally:
        server.stop()
        squatter.close()


def test_a_restart_keeps_its_port_even_when_taken() -> None:
    server = RedisServer()
    server.start()
    port = server.port
    try:
        server.kill()
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        try:
            with pytest.raises(Exception, match="Address already in use"):
                server.start()
        finally:
            squatter.close()
        server.start()
        assert server.port == port
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("ephemeral", "port_outside"),
    [((1024, 65535), False), ((10000, 65535), True), ((1024, 65000), True)],
)
def test_hosts_with_a_wide_ephemeral_range_still_get_ports(
    monkeypatch: pytest.MonkeyPatch, ephemeral: tuple[int, int], port_outside: bool
) -> None:
    """A host tuned to a wide range (1024-65535 is common) leaves few ports outside it, or
    none. A port outside is still found where one exists, and otherwise any free port, with a
    warning, rather than no server at all. (In these three, no cluster node's pair of ports
    fits outside.)"""
    from cachecow.testing import server

    monkeypatch.setattr(server, "_ephemeral_range", lambda: ephemeral)
    low, high = ephemeral
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        port = free_port()
    assert (not low <= port <= high) == port_outside
    assert len(caught) == (0 if port_outside else 1)
    assert _bindable(port)
    with pytest.warns(RuntimeWarning, match="ephemeral port range"):
        node = free_cluster_port()
    assert _bindable(node)
    assert _bindable(node + 10000)
