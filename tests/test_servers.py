"""The test servers themselves: ports that a reconnecting client cannot self-connect to, and a
picked port that was taken meanwhile is replaced."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from cachecow.testing import RedisServer, free_port
from cachecow.testing.server import _ephemeral_range, free_cluster_port


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
