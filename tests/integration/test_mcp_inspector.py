"""The same flows through a client nobody here wrote: the MCP Inspector's CLI mode
(`@modelcontextprotocol/inspector` from npm, installed by `make inspector` from tools/mcp-inspector's lockfile).
Each call starts `airun mcp` over stdio afresh, as the Inspector does: everything a transaction needs is in the
API server, not in the server process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller.localcluster.devenv import DevEnvironment
from tests.httpserver import LoopbackAPI
from tests.integration.test_mcp_transactions import AGENT, agents, remote_capabilities  # noqa: F401  (fixtures)
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
INSPECTOR = REPO / "tools" / "mcp-inspector" / "node_modules" / ".bin" / "mcp-inspector"


@pytest.fixture(scope="module")
def inspector() -> Path:
    """Installed by the project's own files (npm ci; a no-op once installed)."""
    made = subprocess.run(["make", "-s", "inspector"], cwd=REPO, capture_output=True, text=True, check=False)
    assert made.returncode == 0 and INSPECTOR.exists(), f"make inspector failed: {made.stdout}{made.stderr}"
    return INSPECTOR


class Inspector:
    def __init__(self, binary: Path, env: DevEnvironment, namespace: str) -> None:
        self.binary, self.env, self.namespace = binary, env, namespace

    def __call__(self, who: str, method: str, tool: str | None = None, **arguments: Any) -> dict[str, Any]:
        server = [sys.executable, "-m", "controller.cli.main", "mcp", "--kubeconfig", str(self.env.kubeconfig)]
        argv = [str(self.binary), "--cli", *server, "--context", who, "-n", self.namespace, "--method", method]
        if tool:
            argv += ["--tool-name", tool]
        for key, value in arguments.items():
            argv += ["--tool-arg", f"{key}={value}"]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(argv[2:])}\n{done.stdout}\n{done.stderr}"
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def call(self, who: str, tool: str, **arguments: Any) -> dict[str, Any]:
        return self(who, "tools/call", tool, **arguments)


@pytest.fixture
def inspect(inspector: Path, env: DevEnvironment, agents: str) -> Inspector:  # noqa: F811
    return Inspector(inspector, env, agents)


def test_the_inspector_lists_the_transaction_tools_and_the_reserved_argument(inspect: Inspector) -> None:
    listed = {t["name"]: t for t in inspect("bob", "tools/list")["tools"]}
    assert {"undo", "begin_transaction", "commit_transaction", "rollback_transaction", "transaction_status"} <= set(
        listed
    )
    write = listed["io-fs-write_file"]["inputSchema"]
    assert write["required"] == ["path", "content"] and write["properties"]["transaction"]["type"] == "string"


def test_begin_calls_a_failing_call_and_rollback_through_the_inspector(
    inspect: Inspector,
    env: DevEnvironment,
    kube: Kube,
    api: LoopbackAPI,
) -> None:
    namespace = inspect.namespace
    workspace = env.workspaces / namespace
    create, broken = remote_capabilities(kube, namespace, api)
    tx = inspect.call("bob", "begin_transaction", name="inspected", ttlSeconds=600)["structuredContent"]["transaction"]
    calls = []
    for tool, arguments in [
        ("io-fs-write_file", {"path": "i/one.txt", "content": "one"}),
        (create, {"name": "orders"}),
        ("io-fs-write_file", {"path": "i/two.txt", "content": "two"}),
    ]:
        result = inspect.call("bob", tool, transaction=tx, **arguments)
        assert result["isError"] is False, result
        calls.append(result["structuredContent"]["workflow"])
    failing = inspect.call("bob", broken, transaction=tx, name="replica")
    assert failing["isError"] is True and "404" in failing["content"][0]["text"]
    assert api.items == {"1": {"name": "orders"}} and (workspace / "i" / "two.txt").exists()

    refused = inspect.call("agent", "rollback_transaction", transaction=tx)
    assert refused["isError"] is True and f"transaction {tx} was begun by bob" in refused["content"][0]["text"]
    joined = inspect.call("agent", "io-fs-write_file", transaction=tx, path="i/evil.txt", content="x")
    assert (
        joined["isError"] is True
        and f"only that principal may add calls to it, not {AGENT}" in joined["content"][0]["text"]
    )

    rolled = inspect.call("bob", "rollback_transaction", transaction=tx)
    assert rolled["isError"] is False, rolled
    state = rolled["structuredContent"]
    assert state["phase"] == "RolledBack" and state["undone"] == list(reversed(calls))
    assert api.items == {} and not (workspace / "i" / "one.txt").exists() and not (workspace / "i" / "two.txt").exists()
    status = inspect.call("bob", "transaction_status", transaction=tx)["structuredContent"]
    assert [c["phase"] for c in status["calls"]] == ["Undone", "Undone", "Undone", "Failed"]


def test_undo_of_one_call_through_the_inspector(inspect: Inspector, env: DevEnvironment) -> None:
    workspace = env.workspaces / inspect.namespace
    inspect.call("bob", "io-fs-write_file", path="u.txt", content="first")
    second = inspect.call("bob", "io-fs-write_file", path="u.txt", content="second")
    undone = inspect.call("bob", "undo", count=1)
    assert undone["isError"] is False, undone
    assert [u["workflow"] for u in undone["structuredContent"]["undone"]] == [second["structuredContent"]["workflow"]]
    assert (workspace / "u.txt").read_text() == "first"


def test_a_ttl_rollback_across_an_operator_restart_seen_through_the_inspector(
    inspect: Inspector, env: DevEnvironment, kube: Kube
) -> None:
    workspace = env.workspaces / inspect.namespace
    tx = inspect.call("bob", "begin_transaction", name="abandoned", ttlSeconds=6)["structuredContent"]["transaction"]
    inspect.call("bob", "io-fs-write_file", transaction=tx, path="gone.txt", content="x")
    env.stop_operator()
    try:
        time.sleep(7)
    finally:
        env.start_operator()
    deadline = time.monotonic() + 60
    while (state := inspect.call("bob", "transaction_status", transaction=tx)["structuredContent"])[
        "phase"
    ] != "RolledBack":
        assert time.monotonic() < deadline, state
        time.sleep(1)
    assert state["reason"] == "Expired" and not (workspace / "gone.txt").exists()
