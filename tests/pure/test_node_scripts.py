"""The node form of the batch scripts, and how a batch's call is split over a cluster's nodes
(``BatchCall``), without Redis: the real thing runs in tests/cluster/test_node_batches.py."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError, SlotNotCoveredError

from cachecow._client import node_script_calls, script_calls
from cachecow._ops import Script
from cachecow._redis_io import BatchCall, each_lookup, refuses_node_scripts
from cachecow._scripts import NODE_SHEBANG, node_script_source, script_source

PER_NODE = (resources.files("cachecow") / "lua" / "per_node.lua").read_text(encoding="utf-8")


def test_the_node_form_wraps_the_batch_script_unchanged() -> None:
    for name in ("get_or_lease_many", "commit_many"):
        source = node_script_source(name)
        first, rest = source.split("\n", 1)
        assert first == NODE_SHEBANG == "#!lua flags=allow-cross-slot-keys"
        assert rest.startswith("local function run(KEYS, ARGV, redis)\n")
        assert script_source(name) in rest  # the script itself, unchanged
        assert rest.endswith(PER_NODE)  # then the part that runs it per lookup
    with pytest.raises(KeyError):
        node_script_source("get_or_lease")  # not a batch script


def test_a_batch_script_with_a_shebang_of_its_own_keeps_its_flags() -> None:
    source = node_script_source("commit_many", "#!lua flags=no-writes,allow-oom\nreturn 1\n")
    first, rest = source.split("\n", 1)
    assert first == "#!lua flags=allow-cross-slot-keys,no-writes,allow-oom"
    assert rest.startswith("local function run(KEYS, ARGV, redis)\nreturn 1\n")


class Node:
    def __init__(self, name: str) -> None:
        self.name = name


def keys_in(slots: list[int]) -> list[str]:
    """A value key in each of ``slots`` (as the default keys' hash tags make them)."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < len(set(slots)):
        key = f"k:{{{n}}}"
        if key_slot(key.encode()) in slots:
            found.setdefault(key_slot(key.encode()), key)
        n += 1
    return [found[slot] for slot in slots]


def batch(value_keys: list[str], per: int = 1) -> BatchCall:
    keys = tuple(k for vk in value_keys for k in (vk, vk + ":lease"))
    args = ("token", 1000, *(f"arg{i}-{j}" for i in range(len(value_keys)) for j in range(per)))
    return BatchCall(Script("get_or_lease_many", keys, args, shared=2))


def test_a_batch_is_split_by_the_node_of_each_slot() -> None:
    a, b = Node("a"), Node("b")
    value_keys = keys_in([10, 20, 10, 30])  # lookups 0 and 2 share slot 10
    split = batch(value_keys)
    slots_cache: dict[int, list[Any]] = {10: [a], 20: [b], 30: [a]}
    assert split.by_node(slots_cache) == [(a, [0, 2, 3]), (b, [1])]
    with pytest.raises(SlotNotCoveredError):
        split.by_node({10: [a], 20: [b]})  # no node for slot 30, as the client's map has it


def test_a_node_with_several_slots_gets_the_node_form() -> None:
    value_keys = keys_in([10, 20, 10])
    split = batch(value_keys)
    scripts = script_calls()
    (call,) = split.calls([0, 1, 2], scripts, node_script_calls(scripts), eval_only=False)
    assert call.node_form
    assert call.args[:3] == ("EVALSHA", node_script_calls(scripts)["get_or_lease_many"].sha, 0)
    assert call.argv == (
        2, 1, "token", 1000,  # shared, per lookup, the shared arguments
        value_keys[0], value_keys[0] + ":lease", "arg0-0",
        value_keys[1], value_keys[1] + ":lease", "arg1-0",
        value_keys[2], value_keys[2] + ":lease", "arg2-0",
    )  # fmt: skip
    node_form = node_script_calls(scripts)["get_or_lease_many"]
    assert call.eval_args() == ("EVAL", node_form.source, 0, *call.argv)


def test_one_slot_or_no_node_form_is_the_scripts_own_call_per_slot() -> None:
    value_keys = keys_in([10, 20, 10])
    split = batch(value_keys)
    scripts = script_calls()
    (alone,) = split.calls([0, 2], scripts, node_script_calls(scripts), eval_only=False)
    assert not alone.node_form
    assert alone.keys == tuple(k for i in (0, 2) for k in (value_keys[i], value_keys[i] + ":lease"))
    assert alone.argv == ("token", 1000, "arg0-0", "arg2-0")
    assert alone.args == ("EVALSHA", scripts["get_or_lease_many"].sha, 4, *alone.keys, *alone.argv)
    per_slot = split.calls([0, 1, 2], scripts, None, eval_only=True)  # refused: per slot
    assert [call.lookups for call in per_slot] == [[0, 2], [1]]
    assert all(call.args[0] == "EVAL" for call in per_slot)


def test_a_call_that_is_not_two_keys_and_as_many_arguments_per_lookup_is_refused() -> None:
    two = ("a", "a:lease", "b", "b:lease")
    with pytest.raises(ValueError, match="per lookup"):
        BatchCall(Script("commit_many", two, ("token", "v", 0, "w"), shared=1))
    with pytest.raises(ValueError, match="per lookup"):
        BatchCall(Script("commit_many", two[:3], ("token", "v", 0), shared=1))


def test_each_lookup_gets_its_reply_or_the_error() -> None:
    assert each_lookup(b"10", 2) == [1, 0]  # commit_many's string
    assert each_lookup([b"hit", 1], 2) == [b"hit", 1]
    error = ResponseError("OOM")
    assert each_lookup(error, 3) == [error] * 3
    (wrong,) = each_lookup([1, 2], 1)
    assert isinstance(wrong, ResponseError)


def test_servers_that_cannot_run_a_node_form_are_told_from_others() -> None:
    assert refuses_node_scripts(ResponseError("Unexpected flag in script shebang: x"))
    assert refuses_node_scripts(ResponseError("Error compiling script (new function): ..."))
    assert not refuses_node_scripts(NoScriptError("No matching script"))
    assert not refuses_node_scripts(ResponseError("OOM command not allowed"))
    assert not refuses_node_scripts(b"1")
