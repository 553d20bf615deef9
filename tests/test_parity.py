"""The sync and asyncio drivers are twins: this fails when they drift apart.

``cachecow/_core.py`` (``CacheCow``) and ``cachecow/_async.py`` (``AsyncCacheCow``) perform the
same flows; most of their methods are the same code but for ``async``/``await``. Each method
defined in both must read the same once ``await`` is removed (docstrings aside), unless it is
listed below with the reason it differs; a method in one class only must be listed too.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

from cachecow import AsyncCacheCow, CacheCow

ROOT = Path(__file__).resolve().parent.parent / "cachecow"

DIFFERENT_BY_DESIGN = {
    "_check_client": "each accepts its own client classes (and the async one sets a cluster gate)",
    "_drive": "the async driver awaits, loads a cluster's map first and gates cluster calls",
    "_reader": "a reader is a thread (sync) or a task of an event loop (asyncio)",
    "_replicated": "the sync cluster path runs nodes on worker threads, the async one gathers",
    "_cluster_pipeline": "redis-py's sync and asyncio cluster pipelines differ",
}
ONLY_SYNC = {
    "_per_node": "runs one call per node on worker threads (asyncio gathers instead)",
}
ONLY_ASYNC = {
    "fetch_many": "awaits an async fetch per lookup (the sync default is inherited)",
    "_brief": "bounds a release after a cancellation in time",
    "_gated": "limits concurrent calls on an asyncio cluster client (it has no blocking pool)",
    "_through_gate": "the gate itself",
    "_replicated_per_node": "gathers the nodes' WAITs",
}


class _Unasync(ast.NodeTransformer):
    """``async def`` to ``def``, ``await x`` to ``x``."""

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


SYNC = methods("_core.py", "CacheCow")
ASYNC = methods("_async.py", "AsyncCacheCow")


def test_twin_methods_read_the_same_but_for_await() -> None:
    drifted = [
        name
        for name in sorted(set(SYNC) & set(ASYNC))
        if name not in DIFFERENT_BY_DESIGN and body(SYNC[name]) != body(ASYNC[name])
    ]
    assert drifted == [], f"the sync and async versions differ: {drifted}"
    assert len(set(SYNC) & set(ASYNC)) - len(DIFFERENT_BY_DESIGN) >= 12


def test_every_method_of_one_driver_only_is_accounted_for() -> None:
    assert set(SYNC) - set(ASYNC) == set(ONLY_SYNC)
    assert set(ASYNC) - set(SYNC) == set(ONLY_ASYNC)
    assert set(DIFFERENT_BY_DESIGN) <= set(SYNC) & set(ASYNC)


def test_public_methods_take_the_same_parameters() -> None:
    public = [name for name in dir(CacheCow) if not name.startswith("_")]
    for name in public:
        sync, other = getattr(CacheCow, name), getattr(AsyncCacheCow, name, None)
        assert other is not None, f"AsyncCacheCow has no {name}"
        if callable(sync):  # the parameters (the return types differ: coroutines)
            parameters = inspect.signature(sync).parameters
            assert parameters == inspect.signature(other).parameters, name
