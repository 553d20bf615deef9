"""``mypy --strict`` over small applications of each adapter, as a user's type checker sees
cachecow: typed options (a misspelt one fails), ``get``/``get_many``/``peek`` typed by the
model, ``busy`` a literal. The package is checked as installed: ``cachecow`` with its
``adapters`` inside (the editable install's import hook is invisible to mypy). Django is
untyped, as to a user without django-stubs: the stubs are hidden where the dev extra has them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
APPS = ["app_core.py", "app_sqlalchemy.py", "app_django.py", "app_mongoengine.py"]
CONFIG = """\
[mypy]
strict = true
python_version = 3.10
mypy_path = {path}
cache_dir = {cache}

[mypy-django.*,mongoengine.*]
ignore_missing_imports = true

[mypy-django.*]
follow_imports = skip
follow_imports_for_stubs = true

[mypy-cachecow.*]
follow_imports = silent
"""


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the package laid out as installed, the apps, and mypy's config."""
    work = tmp_path_factory.mktemp("user_typing")
    shutil.copytree(ROOT / "cachecow", work / "site" / "cachecow")
    shutil.copytree(ROOT / "adapters", work / "site" / "cachecow" / "adapters")
    for name in APPS:
        shutil.copy(HERE / name, work / name)
    cache = ROOT / ".mypy_cache" / "user_typing"  # kept between runs: a warm check is fast
    (work / "mypy.ini").write_text(CONFIG.format(path=work / "site", cache=cache))
    return work


def mypy(work: Path, *files: str) -> tuple[str, int]:
    out, err, status = api.run(["--config-file", str(work / "mypy.ini"), *files])
    return out + err, status


def test_the_apps_pass_mypy_strict(checker: Path) -> None:
    out, status = mypy(checker, *(str(checker / name) for name in APPS))
    assert status == 0, out


@pytest.mark.parametrize(
    ("mistake", "reported"),
    [
        (
            "cache = SQLAlchemyCache(client, Session, ttl_seconds=5)",
            'Unexpected keyword argument "ttl_seconds"',
        ),
        (
            'cache = SQLAlchemyCache(client, Session, busy="wiat")',
            'Argument "busy" to "SQLAlchemyCache"',
        ),
        (
            'cache = SQLAlchemyCache(client, Session, ttl="60")',
            'Argument "ttl" to "SQLAlchemyCache"',
        ),
    ],
    ids=["option-typo", "busy-typo", "ttl-str"],
)
def test_a_mistake_in_the_app_fails_mypy(checker: Path, mistake: str, reported: str) -> None:
    source = (checker / "app_sqlalchemy.py").read_text()
    line = '    cache = SQLAlchemyCache(client, Session, ttl=60, busy="wait", prefix="app:")'
    assert line in source
    broken = checker / "app_broken.py"
    broken.write_text(source.replace(line, f"    {mistake}"))
    out, status = mypy(checker, str(broken))
    assert status == 1, out
    assert reported in out, out
