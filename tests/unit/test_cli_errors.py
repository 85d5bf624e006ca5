"""Errors of the airun command that need no cluster: one clear line, exit 1, no traceback, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli.main import main


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("sqlite:///{tmp}/missing.db", "no audit store at"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/x", "Connection refused"),
        ("mysql://x/y", "No module named"),
        ("not a url", "Could not parse SQLAlchemy URL"),
    ],
)
def test_an_unusable_audit_store_is_one_clear_line(url: str, said: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["audit", "verify", "--db", url.format(tmp=tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert said in result.output and "Traceback" not in result.output
    assert not (tmp_path / "missing.db").exists()  # reading never creates a store
