"""The built sdist and wheel: their names, what they hold, and that an installed copy works
on its own, in fresh venvs, with each extra, installed by the distribution's name.

They are built once per module (``python -m build``: the sdist, then the wheel from the
sdist), from a snapshot of the source tree copied to a temporary directory (without .git,
.venv, build/ and egg-info). Building in place would leave a build/ folder in the working
tree, and stale files in build/lib can end up in later wheels.

The fresh venvs get their dependencies from the package index, as a user's would.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import cachecow
from cachecow._scripts import SCRIPT_NAMES
from tests.docs.test_docs import delete_keys, expected_output, first_example
from tests.docs.test_quickstart import DEMO, assert_key_lines

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "cachecow"
ADAPTERS_DIR = ROOT / "adapters"
TIMEOUT = 300
# The distribution's name ("cachecow" on PyPI is closeio's original, a different package), and
# its normalized form in file names (PEP 427, PEP 625).
DISTRIBUTION = "cachecow-orm"
FILE_STEM = "cachecow_orm"
# Each user-facing extra, and what a fresh venv with only it (and those before it) can then do.
EXTRAS = {
    "sqlalchemy": """
import greenlet, sqlalchemy.ext.asyncio
from cachecow.adapters.sqlalchemy import AsyncSQLAlchemyCache, SQLAlchemyCache, install
""",
    "django": """
from cachecow.adapters.django import CachedManager, DjangoCache
""",
    "mongoengine": """
import blinker
from cachecow.adapters.mongoengine import CachedQuerySet, MongoCache
""",
    "msgpack": """
serializer = cachecow.MsgpackSerializer()
assert serializer.loads(serializer.dumps({"a": [1, b"x"]})) == {"a": [1, b"x"]}
""",
    "orjson": """
assert cachecow.JsonSerializer().backend == "orjson", cachecow.JsonSerializer().backend
""",
}

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


@dataclass(frozen=True)
class Built:
    wheel: BuiltWheel
    sdist: Path


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
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    source = tmp_path_factory.mktemp("source") / "cachecow-src"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    out = tmp_path_factory.mktemp("dist")
    # No isolation: the build backend is this venv's setuptools (the dev extra), no download.
    run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        cwd=str(out),
        env=clean_env(),
    )
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1, wheels
    assert len(sdists) == 1, sdists
    with zipfile.ZipFile(wheels[0]) as archive:
        names = frozenset(archive.namelist())
    return Built(BuiltWheel(wheels[0], names), sdists[0])


@pytest.fixture(scope="module")
def wheel(built: Built) -> BuiltWheel:
    return built.wheel


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


def test_sdist_name_and_metadata(built: Built) -> None:
    stem = f"{FILE_STEM}-{cachecow.__version__}"
    assert built.sdist.name == f"{stem}.tar.gz"
    with tarfile.open(built.sdist) as archive:
        names = set(archive.getnames())
        pkg_info = archive.extractfile(f"{stem}/PKG-INFO")
        assert pkg_info is not None
        text = pkg_info.read().decode()
    assert f"\nName: {DISTRIBUTION}\n" in text
    assert f"\nVersion: {cachecow.__version__}\n" in text
    for name in ("LICENSE", "README.md", "pyproject.toml", "cachecow/__init__.py"):
        assert f"{stem}/{name}" in names, name


def test_wheel_metadata_fits_a_first_release(wheel: BuiltWheel) -> None:
    info = f"{FILE_STEM}-{cachecow.__version__}.dist-info"
    with zipfile.ZipFile(wheel.path) as archive:
        text = archive.read(f"{info}/METADATA").decode()
        license_text = archive.read(f"{info}/licenses/LICENSE").decode()
    headers = text.split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    assert license_text.startswith("MIT License\n")
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Requires-Python: >=3.10" in headers
    assert "Classifier: Development Status :: 4 - Beta" in headers
    # License classifiers are superseded by License-Expression (PEP 639).
    assert not any(h.startswith("Classifier: License ::") for h in headers)
    # The extras that name the package itself name it by the distribution's name.
    selves = [h for h in headers if h.startswith("Requires-Dist: cachecow")]
    assert selves
    assert all(h.startswith(f"Requires-Dist: {DISTRIBUTION}[") for h in selves), selves
    extras = {h.removeprefix("Provides-Extra: ") for h in headers if h.startswith("Provides-Extra")}
    assert set(EXTRAS) <= extras


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


# ---------------------------------------------------------------------------------------------
# Fresh venvs: the wheel installed by the distribution's name, then each extra


class Venv:
    """A fresh venv (its own pip, nothing else), used from an empty working directory."""

    def __init__(self, path: Path, cwd: Path) -> None:
        self.path = path
        self.cwd = cwd
        run([sys.executable, "-m", "venv", str(path)], env=clean_env())
        self.python = path / "bin" / "python"

    def install(self, wheel: BuiltWheel, extra: str = "") -> str:
        """``pip install 'cachecow-orm[extra] @ file:///...whl'``: pip checks that the name
        matches the wheel's, and gets the dependencies from the index."""
        spec = f"{DISTRIBUTION}[{extra}]" if extra else DISTRIBUTION
        return run(
            [str(self.python), "-m", "pip", "install", f"{spec} @ {wheel.path.as_uri()}"],
            cwd=str(self.cwd),
            env=clean_env(),
        ).stdout

    def python_code(self, code: str, **env: str) -> str:
        return run(
            [str(self.python), "-W", "error", "-c", code],
            cwd=str(self.cwd),
            env=clean_env(**env),
        ).stdout


def make_venv(tmp_path_factory: pytest.TempPathFactory, name: str) -> Venv:
    return Venv(tmp_path_factory.mktemp(name) / "venv", tmp_path_factory.mktemp(f"{name}-cwd"))


@pytest.fixture(scope="module")
def bare_venv(wheel: BuiltWheel, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    venv = make_venv(tmp_path_factory, "bare")
    venv.install(wheel)
    return venv


WHERE_FROM = """
import json, sys, importlib.metadata as md
import cachecow, cachecow.adapters
print(json.dumps({
    "cachecow": cachecow.__file__,
    "adapters": cachecow.adapters.__file__,
    "prefix": sys.prefix,
    "name": md.metadata("cachecow-orm")["Name"],
    "version": md.version("cachecow-orm"),
    "provides": md.packages_distributions()["cachecow"],
}))
"""


def test_fresh_venv_installs_the_wheel_by_its_name(bare_venv: Venv) -> None:
    report = json.loads(bare_venv.python_code(WHERE_FROM))
    site = Path(report["prefix"]).resolve()
    assert site == bare_venv.path.resolve()
    for key in ("cachecow", "adapters"):
        assert Path(report[key]).resolve().is_relative_to(site), (key, report[key])
    assert report["name"] == DISTRIBUTION
    assert report["version"] == cachecow.__version__
    assert report["provides"] == [DISTRIBUTION]


def test_fresh_venv_has_the_console_script(bare_venv: Venv) -> None:
    result = run(
        [str(bare_venv.path / "bin" / "cachecow"), "--help"],
        cwd=str(bare_venv.cwd),
        env=clean_env(),
    )
    assert result.stdout.startswith("usage: cachecow ")


@pytest.mark.parametrize("adapter", ["sqlalchemy", "django", "mongoengine"])
def test_an_adapter_without_its_extra_names_the_extra_to_install(
    bare_venv: Venv, adapter: str
) -> None:
    code = f"""
try:
    import cachecow.adapters.{adapter}
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("imported without its extra")
"""
    out = bare_venv.python_code(code)
    assert f"pip install '{DISTRIBUTION}[{adapter}]'" in out


def test_readme_first_example_runs_from_the_installed_wheel(
    bare_venv: Venv, redis_url: str
) -> None:
    code = first_example()
    try:
        out = bare_venv.python_code(code, REDIS_URL=redis_url)
    finally:
        delete_keys(redis_url, "cachecow:User:*")
    assert out.splitlines() == expected_output(code)


def test_quickstart_demo_runs_from_the_installed_wheel(bare_venv: Venv, redis_url: str) -> None:
    # REDIS_URL set: the demo needs no fakeredis (the demo extra), only the core.
    out = run(
        [str(bare_venv.python), "-W", "error", str(DEMO)],
        cwd=str(bare_venv.cwd),
        env=clean_env(REDIS_URL=redis_url),
    ).stdout
    assert out.startswith(f"Redis: {redis_url} (keys under cachecow-demo:")
    assert_key_lines(out)


def test_each_extra_installs_by_name_and_brings_what_its_code_needs(
    wheel: BuiltWheel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # One venv, the extras added one at a time: each extra's code runs before the next extra
    # is installed, so no extra leans on what a later one brings.
    venv = make_venv(tmp_path_factory, "extras")
    for extra, code in EXTRAS.items():
        venv.install(wheel, extra)
        venv.python_code("import cachecow\n" + code)
    run([str(venv.python), "-m", "pip", "check"], cwd=str(venv.cwd), env=clean_env())
