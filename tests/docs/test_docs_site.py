"""The documentation site builds with ``mkdocs build --strict``: no broken link or anchor, no
page left out of the nav, and every nav page rendered."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

yaml = pytest.importorskip("yaml", reason="the site needs the docs extra (mkdocs)")
pytest.importorskip("mkdocs", reason="the site needs the docs extra (mkdocs)")
pytest.importorskip("material", reason="the site needs the docs extra (mkdocs-material)")


def nav_pages(nav: list[Any]) -> Iterator[str]:
    """Every page file named in the ``nav`` of mkdocs.yml, nested sections included."""
    for entry in nav:
        items = entry.values() if isinstance(entry, dict) else [entry]
        for item in items:
            if isinstance(item, list):
                yield from nav_pages(item)
            else:
                yield str(item)


def html_of(page: str) -> str:
    """Where mkdocs (with directory URLs) writes ``page``."""
    if page == "index.md":
        return "index.html"
    return f"{page.removesuffix('.md')}/index.html"


def test_the_site_builds_strictly_with_every_page_in_the_nav(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = list(nav_pages(config["nav"]))
    on_disk = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(pages) == on_disk, "every page in docs/ is in the nav of mkdocs.yml, once"

    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    assert (site / "index.html").is_file()
    for page in pages:
        assert (site / html_of(page)).is_file(), f"{page} was not rendered"
    assert (site / "assets" / "chart.png").is_file()
    internals = (site / html_of("internals.md")).read_text(encoding="utf-8")
    assert 'id="redis-py-workarounds"' in internals
