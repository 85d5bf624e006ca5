"""Agents' transactions (DESIGN section 6) through `airun mcp`, driven by the official MCP SDK client against the
real API server and operator: begin, calls that write files and call a loopback HTTP API, a failing call,
rollback in reverse completion order; undo; TTL rollback across an operator restart; another identity refused."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientSession

from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment
from tests.httpserver import LoopbackAPI
from tests.integration.test_custom_capabilities import capability
from tests.integration.test_governance import policy
from tests.integration.test_mcp import run, text_of
from tests.kube import Kube

AGENT = "system:serviceaccount:agents:planner"


@pytest.fixture
def agents(kube: Kube, namespace: str) -> str:
    """The namespace, where everything runs (default ALLOW) and two principals author: bob and the agent."""
    kube.apply(policy("tx-open"), namespace=namespace)
    kube.let_the_agent_author(namespace)
    time.sleep(0.5)  # the operator's policy index follows the watch
    return namespace


def data(result: types.CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text_of(result)
    return result.structured_content


def remote_capabilities(kube: Kube, namespace: str, api: LoopbackAPI) -> tuple[str, str]:
    """A remote resource API on loopback (POST /items creates, DELETE /items/ID undoes) and a broken one."""
    suffix = namespace.replace("t-", "").replace("-", "")
    create, broken = f"cloud{suffix}.db.create", f"cloud{suffix}.db.broken"
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    undo = {"capability": "net.http.request", "inputs": {"method": "DELETE", "url": "{{ outputs.url }}"}}
    kube.apply(capability(create, f"{api.url}/items", inputs=schema, compensation=undo))
    kube.apply(capability(broken, f"{api.url}/nowhere", inputs=schema, compensation=undo))
    time.sleep(0.5)  # the capability index follows the watch
    return create.replace(".", "-"), broken.replace(".", "-")


def test_a_rollback_undoes_every_call_in_reverse_completion_order(
    env: DevEnvironment, kube: Kube, agents: str, api: LoopbackAPI
) -> None:
    namespace = agents
    workspace = env.workspaces / namespace
    create, broken = remote_capabilities(kube, namespace, api)

    async def body(session: ClientSession) -> list[types.CallToolResult]:
        begun = await session.call_tool("begin_transaction", {"name": "set up the db", "ttlSeconds": 600})
        tx = data(begun)["transaction"]
        results = [begun]
        for tool, arguments in [
            ("io-fs-write_file", {"path": "app/config.json", "content": '{"db": "orders"}'}),
            (create, {"name": "orders"}),
            ("io-fs-write_file", {"path": "app/schema.sql", "content": "create table orders ();"}),
            (broken, {"name": "orders-replica"}),
        ]:
            results.append(await session.call_tool(tool, {**arguments, "transaction": tx}))
        results.append(await session.call_tool("rollback_transaction", {"transaction": tx}))
        return results

    begun, config, db, schema, failing, rolled = run("bob", env, namespace, body)
    tx = data(begun)["transaction"]
    for result in (config, db, schema):
        assert not result.is_error, text_of(result)
        assert data(result)["transaction"] == tx
    assert failing.is_error and "404" in text_of(failing), text_of(failing)
    assert not rolled.is_error and data(rolled)["phase"] == "RolledBack", text_of(rolled)
    assert api.items == {}  # the remote resource is gone...
    assert not (workspace / "app" / "config.json").exists() and not (workspace / "app" / "schema.sql").exists()

    assert not rolled.is_error, text_of(rolled)
    state = data(rolled)
    calls = [data(r)["workflow"] for r in (config, db, schema)]
    assert state["phase"] == "RolledBack" and state["principal"] == "bob"
    assert state["undone"] == list(reversed(calls))  # newest completion first
    assert [c["workflow"] for c in state["calls"]] == [*calls, data(failing)["workflow"]]  # in call order
    assert [c["phase"] for c in state["calls"]] == ["Undone", "Undone", "Undone", "Failed"]
    assert f"undone {calls[1]} (cloud" in text_of(rolled) and "by net.http.request" in text_of(rolled)
    # ...in reverse order: each compensation finished before the next one (older call) began
    finished = [kube.get("wf", name, namespace)["status"]["steps"][0]["compensation"] for name in reversed(calls)]
    assert [c["phase"] for c in finished] == ["Compensated"] * 3
    times = [c["finishedAt"] for c in finished]
    assert times == sorted(times), times
    started = [c["startedAt"] for c in finished]
    assert started[1] >= times[0] and started[2] >= times[1], (started, times)
    deletes = [(m, p) for m, p, _, _ in api.requests if m == "DELETE"]
    assert deletes == [("DELETE", "/items/1")]
    for name in calls:
        obj = kube.get("wf", name, namespace)
        assert obj["metadata"]["labels"]["aifirst.dev/transaction"] == tx
        assert obj["status"]["phase"] == "Compensated"
    # Over: nothing joins it any more.
    late = run(
        "bob",
        env,
        namespace,
        lambda s: s.call_tool("io-fs-write_file", {"path": "x", "content": "x", "transaction": tx}),
    )
    assert late.is_error and f"transaction {tx} is RolledBack" in text_of(late)


def test_undo_compensates_only_the_callers_last_call(env: DevEnvironment, kube: Kube, agents: str) -> None:
    namespace = agents
    workspace = env.workspaces / namespace

    async def body(session: ClientSession) -> tuple[types.CallToolResult, ...]:
        first = await session.call_tool("io-fs-write_file", {"path": "notes.md", "content": "v1"})
        second = await session.call_tool("io-fs-write_file", {"path": "notes.md", "content": "v2"})
        read = await session.call_tool("io-fs-read_file", {"path": "notes.md"})
        undone = await session.call_tool("undo", {})
        return first, second, read, undone

    _, second, _, undone = run("bob", env, namespace, body)
    assert not undone.is_error, text_of(undone)
    assert (workspace / "notes.md").read_text() == "v1"  # the overwrite undone, the first write kept
    report = data(undone)
    assert report["principal"] == "bob"
    assert [u["workflow"] for u in report["undone"]] == [data(second)["workflow"]]
    assert report["undone"][0]["undone"] == [{"step": "write_file", "undo": "io.fs.restore", "phase": "Compensated"}]
    assert text_of(undone).startswith(f"undone {namespace}/{data(second)['workflow']} (io.fs.write_file)")
    # The agent's own calls are its own: it has nothing to undo here.
    theirs = run("agent", env, namespace, lambda s: s.call_tool("undo", {"count": 3}))
    assert not theirs.is_error and data(theirs)["undone"] == [] and f"nothing of {AGENT} to undo" in text_of(theirs)
    assert (workspace / "notes.md").read_text() == "v1"


def test_another_identity_can_neither_join_nor_end_the_transaction(
    env: DevEnvironment, kube: Kube, agents: str
) -> None:
    namespace = agents
    begun = run("bob", env, namespace, lambda s: s.call_tool("begin_transaction", {"name": "bob's", "ttlSeconds": 600}))
    tx = data(begun)["transaction"]
    mine = run(
        "bob",
        env,
        namespace,
        lambda s: s.call_tool("io-fs-write_file", {"path": "b.txt", "content": "b", "transaction": tx}),
    )
    assert not mine.is_error, text_of(mine)

    async def hostile(session: ClientSession) -> tuple[types.CallToolResult, ...]:
        join = await session.call_tool("io-fs-write_file", {"path": "evil.txt", "content": "x", "transaction": tx})
        rollback = await session.call_tool("rollback_transaction", {"transaction": tx})
        commit = await session.call_tool("commit_transaction", {"transaction": tx})
        return join, rollback, commit

    join, rollback, commit = run("agent", env, namespace, hostile)
    refusal = f"transaction {tx} was begun by bob"
    assert join.is_error and f"{refusal}: only that principal may add calls to it, not {AGENT}" in text_of(join)
    assert rollback.is_error and f"{refusal}: only that principal may commit it or roll it back" in text_of(rollback)
    assert commit.is_error and refusal in text_of(commit)
    # kubectl goes through the same webhooks: the agent cannot end it, delete it, or move a workflow into it.
    patched = kube.run(
        "patch", "tx", tx, "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}', as_="agent", check=False
    )
    assert patched.returncode != 0 and refusal in patched.stderr
    deleted = kube.run("delete", "tx", tx, "-n", namespace, as_="agent", check=False)
    assert deleted.returncode != 0 and "only its principal may delete it" in deleted.stderr
    own = run("agent", env, namespace, lambda s: s.call_tool("io-fs-write_file", {"path": "a.txt", "content": "a"}))
    assert not own.is_error, text_of(own)
    labelled = kube.run(
        "label", "wf", data(own)["workflow"], "-n", namespace, f"aifirst.dev/transaction={tx}", as_="agent", check=False
    )
    assert labelled.returncode != 0 and "cannot be added, changed or removed" in labelled.stderr
    forged = {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": "joins-as-bob",
            "labels": {"aifirst.dev/transaction": tx},
            "annotations": {"aifirst.dev/principal": "bob"},
        },
        "spec": {
            "steps": [{"name": "w", "capability": "io.fs.write_file", "inputs": {"path": "e.txt", "content": "e"}}]
        },
    }
    assert kube.apply(forged, namespace=namespace, as_="agent", check=False).returncode != 0
    # Not even its principal rewrites who began it (controller/operator/identities.py, shared with Workflows).
    claimed = kube.run(
        "annotate", "tx", tx, "-n", namespace, "--overwrite", "aifirst.dev/principal=alice", as_="bob", check=False
    )
    assert claimed.returncode != 0, claimed.stdout
    assert "when the transaction is begun and cannot be changed" in claimed.stderr, claimed.stderr
    obj = kube.get("tx", tx, namespace)
    assert obj["status"]["phase"] == "Open" and obj["status"]["principal"] == "bob"
    assert [c["workflow"] for c in obj["status"].get("calls", [])] in ([], [data(mine)["workflow"]])
    # Its principal ends it.
    committed = run("bob", env, namespace, lambda s: s.call_tool("commit_transaction", {"transaction": tx}))
    assert not committed.is_error and data(committed)["phase"] == "Committed", text_of(committed)
    assert [c["workflow"] for c in data(committed)["calls"]] == [data(mine)["workflow"]]
    assert (env.workspaces / namespace / "b.txt").read_text() == "b"


def test_a_transaction_left_open_is_rolled_back_even_across_an_operator_restart(
    env: DevEnvironment, kube: Kube, agents: str
) -> None:
    namespace = agents
    workspace = env.workspaces / namespace

    ttl = 15  # long enough for the calls below on a loaded machine: the operator must stop before it passes

    async def body(session: ClientSession) -> tuple[types.CallToolResult, ...]:
        begun = await session.call_tool("begin_transaction", {"name": "forgotten", "ttlSeconds": ttl})
        tx = data(begun)["transaction"]
        one = await session.call_tool("io-fs-write_file", {"path": "left/one.txt", "content": "1", "transaction": tx})
        two = await session.call_tool("io-fs-write_file", {"path": "left/two.txt", "content": "2", "transaction": tx})
        return begun, one, two

    begun, one, two = run("bob", env, namespace, body)  # ...and the agent goes away without committing
    tx = data(begun)["transaction"]
    assert not one.is_error and not two.is_error
    env.stop_operator()
    try:
        opened = kube.get("tx", tx, namespace)
        assert opened["status"]["phase"] == "Open"
        created = datetime.fromisoformat(opened["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        time.sleep(max(0.0, (created - datetime.now(UTC)).total_seconds() + ttl + 1))  # the TTL passes, no operator
        assert kube.get("tx", tx, namespace)["status"]["phase"] == "Open"
        assert (workspace / "left" / "two.txt").exists()
    finally:
        env.start_operator()
    obj = kube.wait_for(
        "tx", tx, namespace, lambda o: o.get("status", {}).get("phase") == "RolledBack", timeout=60, what="RolledBack"
    )
    assert obj["status"]["reason"] == "Expired"
    assert obj["status"]["undone"] == [data(two)["workflow"], data(one)["workflow"]]
    assert not (workspace / "left" / "one.txt").exists() and not (workspace / "left" / "two.txt").exists()
    events = kube.run("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={tx}", "-o", "json")
    assert "Expired" in json.dumps(json.loads(events.stdout))


def test_an_operator_killed_mid_rollback_finishes_it_after_a_restart_undoing_each_call_once(
    env: DevEnvironment, kube: Kube, agents: str
) -> None:
    namespace = agents
    workspace = env.workspaces / namespace
    begun = run("bob", env, namespace, lambda s: s.call_tool("begin_transaction", {"name": "crash", "ttlSeconds": 600}))
    tx = data(begun)["transaction"]

    def call(path: str) -> str:
        result = run(
            "bob",
            env,
            namespace,
            lambda s: s.call_tool("io-fs-write_file", {"path": path, "content": path, "transaction": tx}),
        )
        assert not result.is_error, text_of(result)
        return str(data(result)["workflow"])

    first = call("crash/one.txt")
    # A call made with kubectl joins too (the same webhook checks): one whose undo takes 3 s.
    slow_undo = {"capability": "test.ledger.record", "inputs": {"ledger": "undo", "entry": "slow", "seconds": 3}}
    kube.apply(
        {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "slow-undo", "labels": {"aifirst.dev/transaction": tx}},
            "spec": {
                "steps": [
                    {
                        "name": "w",
                        "capability": "io.fs.write_file",
                        "inputs": {"path": "crash/two.txt", "content": "2"},
                        "compensation": slow_undo,
                    }
                ]
            },
        },
        namespace=namespace,
        as_="bob",
    )
    kube.wait_for("wf", "slow-undo", namespace, lambda o: o.get("status", {}).get("phase") == "Succeeded")
    last = call("crash/three.txt")
    kube.run("patch", "tx", tx, "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}', as_="bob")
    starts = workspace / "ledgers" / "undo.starts"
    try:
        kube.wait_for("tx", tx, namespace, lambda o: starts.exists(), timeout=60, what="the slow undo started")
        # mid-rollback: the newest call undone, the second one's undo running
        assert processes.kill(env.operator_pid, "controller")
        assert kube.get("tx", tx, namespace)["status"]["phase"] == "RollingBack"
        assert (workspace / "crash" / "one.txt").exists() and not (workspace / "crash" / "three.txt").exists()
    finally:
        env.start_operator()
    obj = kube.wait_for(
        "tx", tx, namespace, lambda o: o.get("status", {}).get("phase") == "RolledBack", timeout=90, what="RolledBack"
    )
    assert obj["status"]["undone"] == [last, "slow-undo", first]
    assert obj["status"]["reason"] == "RollbackRequested" and obj["status"]["rollbackRequestedBy"] == "bob"
    assert not any(
        (workspace / "crash" / p).exists() for p in ("one.txt", "three.txt")
    )  # two.txt: undone by its ledger
    slow = kube.get("wf", "slow-undo", namespace)["status"]["steps"][0]["compensation"]
    oldest = kube.get("wf", first, namespace)["status"]["steps"][0]["compensation"]
    assert oldest["startedAt"] >= slow["finishedAt"]  # the older call waited for the newer one's undo
    assert len((workspace / "ledgers" / "undo.log").read_text().splitlines()) == 1  # undone once, not twice
