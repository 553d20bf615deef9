"""The Lua scripts of the protocol, read once from the package's ``lua/`` folder."""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["SCRIPT_NAMES", "script_source"]

SCRIPT_NAMES = ("commit", "commit_many", "get_or_lease", "get_or_lease_many", "release")


@functools.cache
def script_source(name: str) -> str:
    """The text of ``cachecow/lua/<name>.lua``."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no cachecow script named {name!r}")
    return (resources.files("cachecow") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
