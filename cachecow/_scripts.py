"""The Lua scripts of the protocol, read once from the package's ``lua/`` folder.

A batch script (``get_or_lease_many``, ``commit_many``) also has a *node* form for Redis
Cluster: :func:`node_script_source` wraps it with ``lua/per_node.lua`` into one script that runs
it over every lookup of a batch that one node serves, whatever their hash slots, in one call.
Why it is built so: docs/internals.md#node-scripts.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = [
    "NODE_SCRIPT_NAMES",
    "NODE_SHEBANG",
    "SCRIPT_NAMES",
    "node_script_source",
    "script_source",
]

SCRIPT_NAMES = ("commit", "commit_many", "get_or_lease", "get_or_lease_many", "release")

NODE_SCRIPT_NAMES = ("commit_many", "get_or_lease_many")
"""The batch scripts that have a node form (see ``lua/per_node.lua``)."""

NODE_SHEBANG = "#!lua flags=allow-cross-slot-keys"
"""The first line of a node script: Redis 7's flag for a script whose keys lie in several slots
of the node that runs it. Older servers refuse the script (they cannot compile the line)."""


def _read(name: str) -> str:
    return (resources.files("cachecow") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def script_source(name: str) -> str:
    """The text of ``cachecow/lua/<name>.lua``."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no cachecow script named {name!r}")
    return _read(name)


def node_script_source(name: str, body: str | None = None) -> str:
    """The node form of batch script ``name`` (of ``body``, its source, if given): the
    shebang, the script as ``local function run(KEYS, ARGV, redis)``, then
    ``lua/per_node.lua``."""
    if name not in NODE_SCRIPT_NAMES:
        raise KeyError(f"no cachecow batch script named {name!r}")
    body = script_source(name) if body is None else body
    shebang = NODE_SHEBANG
    if body.startswith("#!lua"):  # a shebang of its own: its flags join the node form's
        line, _, body = body.partition("\n")
        flags = [flag for flag in line.partition("flags=")[2].split(",") if flag.strip()]
        ours = shebang.partition("flags=")[2].split(",")
        shebang = "#!lua flags=" + ",".join(dict.fromkeys([*ours, *map(str.strip, flags)]))
    return f"{shebang}\nlocal function run(KEYS, ARGV, redis)\n{body}\nend\n{_per_node()}"


@functools.cache
def _per_node() -> str:
    return _read("per_node")
