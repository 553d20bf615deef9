"""Running an example program as a user would: a subprocess from the repository's root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: Path, *, without: Iterable[str] = (), **env_vars: str) -> str:
    """Run ``script`` with this Python, the environment less ``without`` plus ``env_vars``;
    assert it exits 0 and return what it printed."""
    dropped = set(without)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(env_vars)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{script.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout
