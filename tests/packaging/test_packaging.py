"""The built wheel: what it contains, and that an installed copy works on its own.

The wheel is built once per module, from a snapshot of the source tree copied to a temporary
directory (without .git, .venv, build/ and egg-info). Building in place would leave a build/
folder in the working tree, and stale files in build/lib can end up in later wheels.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import cachecow
from cachecow._scripts import SCRIPT_NAMES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "cachecow"
ADAPTERS_DIR = ROOT / "adapters"
TIMEOUT = 300
# The distribution's name ("cachecow" on PyPI is closeio's original, a different package), and
# its normalized form in file names (PEP 427, PEP 625).
DISTRIBUTION = "cachecow-orm"
FILE_STEM = "cachecow_orm"

IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)


@dataclass(frozen=True)
class BuiltWheel:
    path: Path
    names: frozenset[str]


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )
    assert result.returncode == 0, (
        f"{args} failed ({result.returncode})\n{result.stdout}\n{result.stderr}"
    )
    return result


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def py_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> BuiltWheel:
    source = tmp_path_factory.mktemp("source") / "cachecow-src"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    out = tmp_path_factory.mktemp("wheelhouse")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "-w",
            str(out),
            str(source),
        ],
        cwd=str(out),
        env=clean_env(),
    )
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        names = frozenset(archive.namelist())
    return BuiltWheel(wheels[0], names)


@pytest.fixture(scope="module")
def installed(wheel: BuiltWheel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            "--target",
            str(target),
            str(wheel.path),
        ],
        cwd=str(target),
        env=clean_env(),
    )
    return target.resolve()


# ---------------------------------------------------------------------------------------------
# Contents


def test_wheel_name_and_version(wheel: BuiltWheel) -> None:
    assert wheel.path.name == f"{FILE_STEM}-{cachecow.__version__}-py3-none-any.whl"
    metadata = f"{FILE_STEM}-{cachecow.__version__}.dist-info/METADATA"
    assert metadata in wheel.names
    with zipfile.ZipFile(wheel.path) as archive:
        text = archive.read(metadata).decode()
    assert f"\nName: {DISTRIBUTION}\n" in text
    assert f"\nVersion: {cachecow.__version__}\n" in text
    assert "\nRequires-Dist: redis" in text


@pytest.mark.parametrize(
    "name",
    [
        "cachecow/__init__.py",
        "cachecow/lua/get_or_lease.lua",
        "cachecow/lua/commit.lua",
        "cachecow/lua/release.lua",
        "cachecow/py.typed",
        "cachecow/adapters/__init__.py",
    ],
)
def test_wheel_contains(wheel: BuiltWheel, name: str) -> None:
    assert name in wheel.names


def test_wheel_contains_every_lua_script(wheel: BuiltWheel) -> None:
    for name in SCRIPT_NAMES:
        assert f"cachecow/lua/{name}.lua" in wheel.names
    for path in (PACKAGE_DIR / "lua").glob("*.lua"):
        assert f"cachecow/lua/{path.name}" in wheel.names


def test_wheel_contains_every_package_module(wheel: BuiltWheel) -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        assert f"cachecow/{path.name}" in wheel.names


def test_wheel_contains_every_adapter_module(wheel: BuiltWheel) -> None:
    files = py_files(ADAPTERS_DIR)
    assert files
    for path in files:
        assert f"cachecow/adapters/{path.relative_to(ADAPTERS_DIR).as_posix()}" in wheel.names


def test_wheel_contains_the_testing_package(wheel: BuiltWheel) -> None:
    testing = PACKAGE_DIR / "testing"
    files = py_files(testing) if testing.is_dir() else []
    if not files:
        pytest.skip("cachecow/testing/ has no modules in this source tree")
    assert (testing / "__init__.py") in files
    for path in files:
        assert f"cachecow/testing/{path.relative_to(testing).as_posix()}" in wheel.names


def test_wheel_holds_only_the_package(wheel: BuiltWheel) -> None:
    for name in wheel.names:
        top = name.split("/", 1)[0]
        assert top in {"cachecow", f"{FILE_STEM}-{cachecow.__version__}.dist-info"}, name
    assert not any(name.startswith(("tests/", "examples/", "adapters/")) for name in wheel.names)
    assert not any("/tests/" in name or "/examples/" in name for name in wheel.names)
    assert not any(name.endswith(".pyc") for name in wheel.names)


# ---------------------------------------------------------------------------------------------
# The installed wheel, imported without the source tree

CHECK_INSTALLED = """
import json, sys
import cachecow, cachecow.adapters
from cachecow._scripts import SCRIPT_NAMES, script_source
finders = [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]
report = {
    "cachecow": cachecow.__file__,
    "adapters": cachecow.adapters.__file__,
    "version": cachecow.__version__,
    "scripts": {name: script_source(name) for name in SCRIPT_NAMES},
    "editable_finder": "_EditableFinder" in finders,
}
if len(sys.argv) > 1:
    import cachecow.testing
    report["testing"] = cachecow.testing.__file__
print(json.dumps(report))
"""


def test_installed_wheel_is_imported_instead_of_the_editable_install(installed: Path) -> None:
    args = [sys.executable, "-W", "error", "-c", CHECK_INSTALLED]
    if (PACKAGE_DIR / "testing" / "__init__.py").is_file():
        args.append("with-testing")
    result = run(args, cwd=str(installed), env=clean_env(PYTHONPATH=str(installed)))
    report = json.loads(result.stdout)
    for key in ("cachecow", "adapters", "testing"):
        if key in report:
            assert Path(report[key]).resolve().is_relative_to(installed), (key, report[key])
    assert Path(report["adapters"]).resolve() == installed / "cachecow" / "adapters" / "__init__.py"
    assert report["version"] == cachecow.__version__
    assert set(report["scripts"]) == set(SCRIPT_NAMES)
    for name, text in report["scripts"].items():
        assert text == (PACKAGE_DIR / "lua" / f"{name}.lua").read_text(encoding="utf-8")
        assert text.strip()
    if is_editable_install():
        # The editable finder is active in this interpreter, and the wheel still wins.
        assert report["editable_finder"] is True


def is_editable_install() -> bool:
    """Whether the installed cachecow-orm distribution is an editable install (PEP 660)."""
    # distribution(DISTRIBUTION) may find the source tree's .egg-info first: look at all.
    for dist in importlib.metadata.distributions(name=DISTRIBUTION):
        text = dist.read_text("direct_url.json")
        if text and json.loads(text).get("dir_info", {}).get("editable", False):
            return True
    return False


def test_editable_install_maps_adapters_to_the_repository(tmp_path: Path) -> None:
    if not is_editable_install():
        pytest.skip("cachecow is not installed in editable mode")
    code = (
        "import json, cachecow, cachecow.adapters; "
        "print(json.dumps([cachecow.__file__, cachecow.adapters.__file__]))"
    )
    # An empty working directory and no PYTHONPATH: only the editable install can find it.
    result = run([sys.executable, "-W", "error", "-c", code], cwd=str(tmp_path), env=clean_env())
    package_file, adapters_file = json.loads(result.stdout)
    assert Path(package_file).resolve() == (PACKAGE_DIR / "__init__.py").resolve()
    assert Path(adapters_file).resolve() == (ADAPTERS_DIR / "__init__.py").resolve()
