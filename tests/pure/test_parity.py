"""The sync and asyncio drivers are twins: this fails when they drift apart.

Two pairs of twins: the cache classes (``CacheCow`` in ``cachecow/_core.py``, ``AsyncCacheCow``
in ``cachecow/_async.py``) and the classes that perform their Redis calls (``RedisIO`` in
``cachecow/_redis_io.py``, ``AsyncRedisIO`` in ``cachecow/_async_redis_io.py``). Each method
defined in both twins must read the same once ``await`` is removed (docstrings aside), unless
it is listed below with the reason it differs; a method in one twin only must be listed too.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

from cachecow import AsyncCacheCow, CacheCow

ROOT = Path(__file__).resolve().parents[2] / "cachecow"

TWINS = {
    "cache": (("_core.py", "CacheCow"), ("_async.py", "AsyncCacheCow")),
    "redis_io": (("_redis_io.py", "RedisIO"), ("_async_redis_io.py", "AsyncRedisIO")),
}
DIFFERENT_BY_DESIGN = {
    "cache": {
        "_bind_client": "each accepts its own client classes (the async one needs an async clock)",
        "_drive": "the async driver awaits, and loads a cluster's map first",
        "_reader": "a reader is a thread (sync) or a task of an event loop (asyncio)",
    },
    "redis_io": {
        "__init__": "each accepts its own client classes (the async one sets a cluster gate)",
        "scan": "an async generator cannot `yield from` (it loops instead)",
        "perform": "the async one gates calls on a cluster client (it has no blocking pool)",
        "replicated": "the sync cluster path runs nodes on worker threads, the async one gathers",
        "_cluster_pipeline": "redis-py's sync and asyncio cluster pipelines differ",
        "_cluster_batch": "the sync one sends to every node, then reads; the async one gathers",
    },
}
ONLY_SYNC = {
    "cache": {},
    "redis_io": {"_per_node": "runs one call per node on worker threads (asyncio gathers)"},
}
ONLY_ASYNC = {
    "cache": {
        "fetch_many": "awaits an async fetch per lookup (the sync default is inherited)",
        "_timeboxed": "bounds a release after a cancellation in time",
    },
    "redis_io": {
        "ready": "loads a cluster's map before a flow's first command",
        "_through_gate": "limits concurrent calls on an asyncio cluster client",
        "_replicated_per_node": "gathers the nodes' WAITs",
    },
}


class _Unasync(ast.NodeTransformer):
    """``async def`` to ``def``, ``async for`` to ``for``, ``await x`` to ``x``."""

    def visit_AsyncFor(self, node: ast.AsyncFor) -> Any:
        plain = ast.For(**{name: getattr(node, name) for name in node._fields})
        return self.generic_visit(ast.copy_location(plain, node))

    def visit_Await(self, node: ast.Await) -> Any:
        return self.visit(node.value)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> Any:
        plain = ast.FunctionDef(**{name: getattr(node, name) for name in node._fields})
        return self.generic_visit(plain)


def methods(module: str, cls: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """The methods of class ``cls`` in ``cachecow/<module>``, without ``@overload`` stubs."""
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    return {
        f.name: f
        for f in node.body
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        and not any(isinstance(d, ast.Name) and d.id == "overload" for d in f.decorator_list)
    }


def body(method: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """The method's statements as source, ``await`` removed, its docstring left out."""
    plain = _Unasync().visit(ast.parse(ast.unparse(method)).body[0])
    statements = plain.body
    if isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant):
        statements = statements[1:]
    return [ast.unparse(statement) for statement in statements]


def twins(pair: str) -> tuple[dict[str, Any], dict[str, Any]]:
    (sync_module, sync_class), (async_module, async_class) = TWINS[pair]
    return methods(sync_module, sync_class), methods(async_module, async_class)


@pytest.mark.parametrize("pair", sorted(TWINS))
def test_twin_methods_read_the_same_but_for_await(pair: str) -> None:
    sync, other = twins(pair)
    different = DIFFERENT_BY_DESIGN[pair]
    shared = set(sync) & set(other)
    drifted = [
        name
        for name in sorted(shared)
        if name not in different and body(sync[name]) != body(other[name])
    ]
    assert drifted == [], f"the sync and async versions differ: {drifted}"
    assert len(shared) - len(different) >= 4


@pytest.mark.parametrize("pair", sorted(TWINS))
def test_every_method_of_one_twin_only_is_accounted_for(pair: str) -> None:
    sync, other = twins(pair)
    assert set(sync) - set(other) == set(ONLY_SYNC[pair])
    assert set(other) - set(sync) == set(ONLY_ASYNC[pair])
    assert set(DIFFERENT_BY_DESIGN[pair]) <= set(sync) & set(other)


def test_public_methods_take_the_same_parameters() -> None:
    public = [name for name in dir(CacheCow) if not name.startswith("_")]
    for name in public:
        sync, other = getattr(CacheCow, name), getattr(AsyncCacheCow, name, None)
        assert other is not None, f"AsyncCacheCow has no {name}"
        if callable(sync):  # the parameters (the return types differ: coroutines)
            parameters = inspect.signature(sync).parameters
            assert parameters == inspect.signature(other).parameters, name
