"""Tests of the adapters against real databases, and of the command line built on them."""

from __future__ import annotations

import re


def without_ttls(text: str) -> str:
    """A command's output with its TTL figures blanked: they count down between two runs."""
    return re.sub(r"ttl [0-9.]+ s", "ttl _ s", text)
