"""Tests of the public surface: __all__, __version__, the exception tree and py.typed."""

from __future__ import annotations

import ast
import builtins
import importlib.metadata
import importlib.resources
import inspect
import re
from pathlib import Path

import pytest

import cachecow
import cachecow.exceptions as exceptions_module

PACKAGE_DIR = Path(cachecow.__file__).resolve().parent


def isort_style_key(name: str) -> tuple[int, list[object]]:
    """The order of ruff's RUF022: SCREAMING_SNAKE_CASE, then CamelCase, then the rest;
    a natural sort (digit runs compared as numbers) within each group."""
    if len(name) > 1 and name.upper() == name and any(c.isalpha() for c in name):
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return group, natural


def top_level_public_names(path: Path) -> set[str]:
    """Every non-underscore name bound at the top level of a module's source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    names.discard("annotations")  # from __future__ import annotations
    return {name for name in names if not name.startswith("_")}


def test_isort_style_key_examples() -> None:
    names = ["connect", "__version__", "CacheCow", "TOMBSTONE", "BusyPolicy", "A_B", "x10", "x9"]
    assert sorted(names, key=isort_style_key) == [
        "A_B",
        "TOMBSTONE",
        "BusyPolicy",
        "CacheCow",
        "__version__",
        "connect",
        "x9",
        "x10",
    ]


@pytest.mark.parametrize("module", [cachecow, exceptions_module], ids=lambda m: m.__name__)
def test_dunder_all_is_sorted_isort_style(module: object) -> None:
    names = list(module.__all__)  # type: ignore[attr-defined]
    assert names == sorted(names, key=isort_style_key)


@pytest.mark.parametrize("module", [cachecow, exceptions_module], ids=lambda m: m.__name__)
def test_dunder_all_names_exist_once(module: object) -> None:
    names = list(module.__all__)  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


def test_every_public_name_of_the_package_is_exported() -> None:
    defined = top_level_public_names(PACKAGE_DIR / "__init__.py")
    assert defined, "parsing found no names"
    assert defined - set(cachecow.__all__) == set()


def test_star_import_gives_exactly_dunder_all() -> None:
    namespace: dict[str, object] = {}
    exec("from cachecow import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(cachecow.__all__)


def test_core_names_are_exported() -> None:
    for name in ["CacheCow", "connect", "NotFound", "JsonSerializer", "TOMBSTONE", "__version__"]:
        assert name in cachecow.__all__


# The distribution's name: "cachecow" on PyPI is closeio's original, a different package.
DISTRIBUTION = "cachecow-orm"


def test_version_matches_installed_metadata() -> None:
    assert cachecow.__version__ == importlib.metadata.version(DISTRIBUTION)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", cachecow.__version__)


def test_the_import_package_comes_from_the_distribution() -> None:
    assert importlib.metadata.metadata(DISTRIBUTION)["Name"] == DISTRIBUTION
    # (an .egg-info of the source tree may list it twice)
    assert DISTRIBUTION in importlib.metadata.packages_distributions()["cachecow"]


def exception_classes() -> list[type[BaseException]]:
    return [getattr(exceptions_module, name) for name in exceptions_module.__all__]


def test_exceptions_all_lists_every_exception_class_of_the_module() -> None:
    defined = {
        name
        for name, obj in vars(exceptions_module).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == exceptions_module.__name__
    }
    assert defined == set(exceptions_module.__all__)


@pytest.mark.parametrize("cls", exception_classes(), ids=lambda c: c.__name__)
def test_every_exception_is_a_cachecow_error(cls: type[BaseException]) -> None:
    assert inspect.isclass(cls)
    assert issubclass(cls, cachecow.CacheCowError)
    assert issubclass(cls, Exception)
    assert getattr(cachecow, cls.__name__) is cls  # re-exported from the package


def parse_exception_tree() -> list[tuple[str, str | None, str]]:
    """(class name, parent name, rest of the line) for each line of the docstring's tree."""
    doc = exceptions_module.__doc__
    assert doc is not None
    lines = doc.split("::", 1)[1].splitlines()
    rows: list[tuple[int, str, str]] = []
    for line in lines:
        if not line.strip():
            if rows:
                break
            continue
        match = re.match(r"^(?P<prefix>[\s│├└─]*)(?P<name>[A-Za-z_]\w*)(?P<rest>.*)$", line)
        assert match, line
        rows.append((len(match["prefix"]), match["name"], match["rest"]))
    base = rows[0][0]
    tree: list[tuple[str, str | None, str]] = []
    stack: list[str] = []
    for width, name, rest in rows:
        depth, remainder = divmod(width - base, 4)
        assert remainder == 0, (name, width)
        del stack[depth:]
        tree.append((name, stack[-1] if stack else None, rest))
        stack.append(name)
    return tree


def test_exception_tree_in_the_docstring_names_every_class() -> None:
    tree = parse_exception_tree()
    names = [name for name, _, _ in tree]
    assert len(names) == len(set(names))
    assert set(names) == set(exceptions_module.__all__)
    assert tree[0][:2] == ("CacheCowError", None)


def test_exception_tree_in_the_docstring_is_the_real_hierarchy() -> None:
    for name, parent, rest in parse_exception_tree():
        cls = getattr(exceptions_module, name)
        if parent is not None:
            assert cls.__bases__[0] is getattr(exceptions_module, parent), name
        also = re.search(r"\(also an? (\w+)\)", rest)
        if also:
            assert issubclass(cls, getattr(builtins, also[1])), name


def test_documented_builtin_bases() -> None:
    assert issubclass(cachecow.ConfigurationError, ValueError)
    assert issubclass(cachecow.InvalidLookup, ValueError)
    assert issubclass(cachecow.NotFound, LookupError)
    assert issubclass(cachecow.InvalidationFailed, cachecow.CacheUnavailable)
    assert not issubclass(cachecow.SerializationError, ValueError)


def test_cache_unavailable_carries_operation_and_keys() -> None:
    exc = cachecow.InvalidationFailed("boom", operation="invalidate", keys=("a", "b"))
    assert exc.operation == "invalidate"
    assert exc.keys == ("a", "b")
    assert str(exc) == "boom"


def test_py_typed_is_next_to_init() -> None:
    assert (PACKAGE_DIR / "__init__.py").is_file()
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert importlib.resources.files("cachecow").joinpath("py.typed").is_file()
