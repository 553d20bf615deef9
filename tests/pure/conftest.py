"""The pure tests need no server: asking for one is a mistake of placement, not a skip."""

from __future__ import annotations

import pytest


@pytest.fixture
def redis_server() -> None:
    pytest.fail("tests/pure runs without Redis: a test that needs a server goes in tests/server")
