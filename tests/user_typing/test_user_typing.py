"""``mypy --strict`` over small applications of each adapter, as a user's type checker sees
cachecow: typed options (a misspelt one fails), ``get``/``get_many``/``peek`` typed by the
model, ``busy`` a literal. The package is checked as installed: ``cachecow`` with its
``adapters`` inside (the editable install's import hook is invisible to mypy).

Django is checked twice: untyped (``app_django.py``, a user without django-stubs, whose stubs
are hidden even where the dev extra installed them), and as a django-stubs user sees it
(``app_django_stubs/``, with the stubs' mypy plugin and the app's own settings)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
STUBS_APP = "app_django_stubs"
STUBS_FILES = [f"{STUBS_APP}/{name}" for name in ("settings.py", "models.py", "reads.py")]
# python_version 3.11: the django-stubs of the dev extra support Python 3.11 and newer.
STUBS_CONFIG = """\
[mypy]
strict = true
python_version = 3.11
mypy_path = {path}
cache_dir = {cache}
plugins = mypy_django_plugin.main

[mypy.plugins.django-stubs]
django_settings_module = app_django_stubs.settings

[mypy-cachecow.*]
follow_imports = silent
"""
needs_stubs = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the dev extra's django-stubs need Python 3.11"
)


def installed(work: Path) -> None:
    """The package laid out as installed, under ``work/site``."""
    shutil.copytree(ROOT / "cachecow", work / "site" / "cachecow")
    shutil.copytree(ROOT / "adapters", work / "site" / "cachecow" / "adapters")


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the package laid out as installed, the apps, and mypy's config."""
    work = tmp_path_factory.mktemp("user_typing")
    installed(work)
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


@pytest.fixture(scope="module")
def stubs_checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as installed, the django-stubs app, and the config with the plugin."""
    work = tmp_path_factory.mktemp("user_typing_stubs")
    installed(work)
    shutil.copytree(HERE / STUBS_APP, work / STUBS_APP)
    cache = ROOT / ".mypy_cache" / "user_typing_stubs"  # its own: the plugin is an option
    (work / "mypy.ini").write_text(STUBS_CONFIG.format(path=work / "site", cache=cache))
    return work


def mypy_django(work: Path, *files: str) -> tuple[str, int]:
    """mypy with the django-stubs plugin, in a process of its own: the plugin sets Django up
    with the app's settings, which must not meet this process's Django."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(work / "mypy.ini"), *files],
        cwd=work,  # the plugin imports the settings module from the working directory
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.stdout + done.stderr, done.returncode


@needs_stubs
def test_the_django_stubs_app_passes_mypy_strict_with_the_plugin(stubs_checker: Path) -> None:
    out, status = mypy_django(stubs_checker, *STUBS_FILES)
    assert status == 0, out


MISTAKES = {  # a line of reads.py, the line put in its place, and what mypy reports
    "manager-get-as-int": (
        "assert_type(person, Person)",
        "assert_type(person, int)",
        'Expression is of type "Person", not "int"',
    ),
    "attribute-typo": (
        "assert_type(person.email, str)",
        "assert_type(person.emial, str)",
        '"Person" has no attribute "emial"',
    ),
    "lookup-typo": (  # reported by the plugin, through CachedManager.get
        'person = Person.cached.get(email="ada@example.com")',
        'person = Person.cached.get(emial="ada@example.com")',
        "Cannot resolve keyword 'emial' into field",
    ),
    "get-many-without-none": (
        'assert_type(cache.get_many(Person, "id", [1, 2]), list[Person | None])',
        'assert_type(cache.get_many(Person, "id", [1, 2]), list[Person])',
        'not "list[Person]"',
    ),
}


@pytest.fixture(scope="module")
def stubs_mistakes(stubs_checker: Path) -> tuple[str, int]:
    """One mypy run over a copy of reads.py per mistake (one process: the plugin's start,
    Django's setup included, is most of a warm run)."""
    source = (stubs_checker / STUBS_APP / "reads.py").read_text()
    files = []
    for name, (line, mistake, _) in MISTAKES.items():
        assert f"    {line}\n" in source
        broken = f"{STUBS_APP}/broken_{name.replace('-', '_')}.py"
        (stubs_checker / broken).write_text(source.replace(f"    {line}\n", f"    {mistake}\n"))
        files.append(broken)
    return mypy_django(stubs_checker, *files)


@needs_stubs
@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_in_the_django_stubs_app_fails_mypy(
    stubs_mistakes: tuple[str, int], name: str
) -> None:
    """The types are real, not Any: each mistake is reported, in its own copy."""
    out, status = stubs_mistakes
    assert status == 1, out
    broken = f"{STUBS_APP}/broken_{name.replace('-', '_')}.py:"
    reports = [report for report in out.splitlines() if report.startswith(broken)]
    assert any(MISTAKES[name][2] in report for report in reports), out
