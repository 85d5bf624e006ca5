"""The Go-built tools the checks need (helm, promtool, a Lua interpreter, ...), from tools/<module>/go.mod.

`make tools` builds them before the suite runs; here a missing one is built on first use (cached by go.sum)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def tools_dir(module: str) -> Path:
    result = subprocess.run(
        ["bash", str(REPO / "tools" / "build-go-tools.sh"), module], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the {module} tools failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def tool(module: str, name: str) -> Path:
    """The binary NAME built from tools/MODULE."""
    path = tools_dir(module) / name
    if not path.exists():
        raise RuntimeError(f"tools/{module} built no {name} (its go.mod lacks a `tool` directive for it?)")
    return path
