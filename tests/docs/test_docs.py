"""The README and docs/ cannot drift from the code: the commands, the first example, the
reference tables (options, hooks, counters, exceptions), and the links between them.

The README is the front page; the reference sections live in docs/ (see mkdocs.yml). Each
check reads the file that now holds its claim; tests/docs/test_docs_site.py builds the site.
"""

from __future__ import annotations

import enum
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis

import cachecow
from cachecow import exceptions
from cachecow.metrics import COUNTERS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = ROOT / "docs"
CI_RUN = ROOT / ".ci" / "run"
README_MAX_LINES = 200

TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' "
    "&& .venv/bin/python -m pytest --full"
)
DEMO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[demo]' "
    "&& .venv/bin/python examples/quickstart.py"
)
HOOKS = (
    "fetch",
    "fetch_many",
    "unique_lookups",
    "get_keys",
    "serialize",
    "deserialize",
    "verify",
    "not_found",
    "model_label",
    "model_keys_pattern",
    "check_lookup",
    "coerce_lookup",
)

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of ``language`` in ``text``, in order."""
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def doc(name: str) -> str:
    """The text of ``docs/<name>``."""
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing"
    return path.read_text(encoding="utf-8")


_HEADING = re.compile(r"^(#{1,6}) (.+?)(?: \{#[\w-]+\})?\s*$")


def section(text: str, title: str) -> str:
    """The body of the heading ``title`` (any level) in ``text``, up to the next heading of the
    same or a higher level. Lines inside fenced code blocks are never headings."""
    lines = text.splitlines(keepends=True)
    fenced = False
    start = level = None
    for index, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        depth = len(match.group(1))
        if start is None:
            if match.group(2) == title:
                start, level = index + 1, depth
        elif level is not None and depth <= level:
            return "".join(lines[start:index])
    assert start is not None, f"no '{title}' heading"
    return "".join(lines[start:])


def first_example() -> str:
    blocks = code_blocks(README, "python")
    assert blocks, "README has no python example"
    return blocks[0]


def expected_output(code: str) -> list[str]:
    """What the example says it prints: the ``-> ...`` comment of each ``print(`` line."""
    expected = []
    for line in code.splitlines():
        if line.startswith("print("):
            match = re.search(r"#.*-> (.+)$", line)
            assert match, f"print line without an '-> output' comment: {line!r}"
            expected.append(match.group(1).strip())
    return expected


def run_python(code: str, redis_url: str) -> str:
    env = {**os.environ, "REDIS_URL": redis_url}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"example failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def delete_keys(redis_url: str, pattern: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=pattern))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- (a) the commands -----------------------------------------------------------------------------


def test_quick_start_has_exactly_the_two_commands_each_in_its_own_block() -> None:
    quick_start = section(README, "Quick start: the two commands")
    blocks = [block.strip() for block in code_blocks(quick_start, "sh")]
    assert blocks == [DEMO_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    lines = [line.strip() for line in CI_RUN.read_text(encoding="utf-8").splitlines()]
    assert TEST_COMMAND in lines, ".ci/run must run the README's test command as written"
    assert "set -euo pipefail" in lines
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable"
    # The tools run after the tests, as docs/development.md lists them.
    for tool in (".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy"):
        assert tool in lines
        assert tool in section(doc("development.md"), "Development")
        assert lines.index(tool) > lines.index(TEST_COMMAND)


def test_demo_command_runs_the_quickstart_with_an_existing_extra() -> None:
    tomllib = pytest.importorskip("tomllib")
    assert DEMO_COMMAND.endswith(".venv/bin/python examples/quickstart.py")
    assert (ROOT / "examples" / "quickstart.py").is_file()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    for command in (DEMO_COMMAND, TEST_COMMAND):
        extra = re.search(r"-e '\.\[(\w+)\]'", command)
        assert extra, command
        assert extra.group(1) in extras


# -- (b) the first example ------------------------------------------------------------------------


def test_first_code_block_is_the_python_example() -> None:
    first_block = _FENCE.search(README)
    assert first_block
    assert first_block.group(1) == "python"
    code = first_example()
    lines = [line for line in code.splitlines() if line.strip()]
    assert 10 <= len(lines) <= 15, "the first example is 10 to 15 lines"
    assert 'os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")' in code
    assert "cachecow.connect(" in code


def test_first_example_runs_against_real_redis_and_prints_what_it_says(redis_url: str) -> None:
    code = first_example()
    expected = expected_output(code)
    assert expected, "the example shows no output"
    try:
        # Twice on the same server: the example must not depend on an empty Redis.
        for _ in range(2):
            assert run_python(code, redis_url).splitlines() == expected
    finally:
        delete_keys(redis_url, "cachecow:User:*")


def test_not_found_example_prints_what_it_says(redis_url: str) -> None:
    usage = section(doc("usage.md"), "Not found and tombstones")
    snippets = [block for block in code_blocks(usage, "python") if "cachecow.NotFound" in block]
    assert len(snippets) == 1
    comment = re.search(r"print\(exc\)\s+# (.+)$", snippets[0], re.M)
    assert comment
    try:
        out = run_python(first_example() + "\n" + snippets[0], redis_url)
    finally:
        delete_keys(redis_url, "cachecow:User:*")
    assert out.splitlines()[-1] == comment.group(1).strip()


# -- (c) the reference sections match the code ----------------------------------------------------


def documented_default(value: Any) -> str:
    """How the options table writes a default."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def test_options_table_lists_every_option_with_its_default() -> None:
    options = section(doc("usage.md"), "Options")
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \| .+ \|$", options, re.M)
    signature = inspect.signature(cachecow.CacheCow.__init__)
    params = [p for p in signature.parameters.values() if p.name != "self"]
    assert [name for name, _ in rows] == [p.name for p in params]
    for (name, default), param in zip(rows, params, strict=True):
        if param.default is inspect.Parameter.empty:
            assert default == "required", name
        else:
            assert default == documented_default(param.default), name


def test_every_counter_is_documented() -> None:
    operations = doc("operations.md")
    documented = re.findall(r"^- `(\w+)`:", section(operations, "Metrics"), re.M)
    assert documented == list(COUNTERS)
    for name in COUNTERS:
        assert f"`{name}`" in operations


def test_every_exception_is_documented_in_the_tree() -> None:
    block = re.search(r"::\n\n((?:    .*\n)+)", exceptions.__doc__ or "")
    assert block, "the exceptions module docstring lost its tree"
    tree = textwrap.dedent(block.group(1))
    assert tree.startswith("CacheCowError\n")
    assert tree in section(doc("usage.md"), "Errors"), (
        "the error tree of docs/usage.md differs from cachecow/exceptions.py"
    )
    for name in exceptions.__all__:
        assert re.search(rf"\b{name}\b", tree), name


def test_every_hook_is_documented_with_its_signature() -> None:
    hooks = section(doc("hooks.md"), "Hooks")
    documented = dict(re.findall(r"^- `(\w+)\(([^)]*)\)`:", hooks, re.M))
    assert sorted(documented) == sorted(HOOKS)
    for hook in HOOKS:
        params = list(inspect.signature(getattr(cachecow.CacheCow, hook)).parameters)[1:]
        assert documented[hook] == ", ".join(params), hook


# -- (d) the front page, the site's home, and what they link to ----------------------------------


def test_readme_is_a_short_front_page() -> None:
    lines = README.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    assert lines[0] == "# cachecow"


def test_site_home_repeats_the_first_example_and_the_commands() -> None:
    home = doc("index.md")
    assert code_blocks(home, "python")[0] == first_example()
    commands = [block.strip() for block in code_blocks(section(home, "Quick start"), "sh")]
    assert commands == [DEMO_COMMAND, TEST_COMMAND]


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_relative_links_of_the_top_level_files_resolve(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    targets = [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t) and t[0] != "#"]
    if name == "README.md":
        assert "docs/index.md" in targets
        assert "docs/protocol.md" in targets
    for target in targets:
        path = target.split("#")[0]
        assert (ROOT / path).exists(), f"{name} links to {target}, which does not exist"


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the markdown tables in ``text``: first cell -> the other cells."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_readme_benchmark_summary_matches_the_benchmarks_page() -> None:
    summary = table_rows(section(README, "Benchmarks"))
    full = table_rows(section(doc("benchmarks.md"), "Reads against raw redis-py and dogpile.cache"))
    header = summary.pop("per operation")
    assert header == ["limit", "cachecow", "dogpile.cache", "dogpile + lock"]
    assert full["per operation"][1] == "protocol floor"
    assert len(summary) >= 4
    for label, cells in summary.items():
        assert label in full, f"README's benchmark row {label!r} is not in docs/benchmarks.md"
        limit, _floor, *others = full[label]
        assert cells == [limit, *others], label


def test_the_sites_chart_is_the_benchmarks_chart() -> None:
    chart = ROOT / "benchmarks" / "results" / "chart.png"
    copy = DOCS / "assets" / "chart.png"
    assert copy.read_bytes() == chart.read_bytes(), (
        "cp benchmarks/results/chart.png docs/assets/chart.png (the site shows the copy)"
    )


def test_changelog_is_one_line_per_change_under_added_and_changed() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    unreleased = section(changelog, "Unreleased")
    assert re.findall(r"^### (.+)$", unreleased, re.M) == ["Added", "Changed"]
    bullets = [line for line in unreleased.splitlines() if line.startswith("- ")]
    assert len(bullets) >= 20
    for line in unreleased.splitlines():
        assert not line.startswith("  "), f"a change takes one line: {line!r}"
        if line.startswith("- "):
            assert len(line) <= 120, f"keep a change under 120 characters: {line!r}"
