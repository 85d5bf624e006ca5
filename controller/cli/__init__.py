"""The `airun` command (controller/cli/main.py) and its command groups, one module each."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The local environment's state directory (`airun up` writes it; the audit store is in it)."""
    return Path(os.environ.get("AIRUN_STATE_DIR", ".airun"))
