"""`airun mcp` driven by the MCP SDK's own client, against the real API server and operator: every tool
call is a Workflow created as the caller, so the server can do nothing the caller's identity cannot."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_governance import decide, wait_phase
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _server_argv(env: DevEnvironment, *args: str) -> list[str]:
    return ["-m", "controller.cli.main", "mcp", "--kubeconfig", str(env.kubeconfig), "--wait", "30", *args]


@asynccontextmanager
async def stdio_session(env: DevEnvironment, context: str, namespace: str) -> AsyncIterator[ClientSession]:
    """`airun mcp` over stdio, launched by the SDK's client as the kubeconfig context CONTEXT."""
    params = StdioServerParameters(
        command=sys.executable, args=_server_argv(env, "--context", context, "-n", namespace), cwd=str(REPO)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def run(context: str, env: DevEnvironment, namespace: str, body: Callable[[ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with stdio_session(env, context, namespace) as session:
            return await body(session)

    return anyio.run(main)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_tools_carry_the_capabilities_schemas_and_annotations(env: DevEnvironment, namespace: str) -> None:
    listed = run("bob", env, namespace, lambda s: s.list_tools())
    tools = {t.name: t for t in listed.tools}
    assert {"submit_workflow", "workflow_status", "list_workflows"} <= tools.keys()
    assert "io-fs-restore" not in tools  # internal: only undoes others
    assert not any(name.startswith("test-") for name in tools)  # the test family only with --test-capabilities
    write = tools["io-fs-write_file"]
    assert write.title == "io.fs.write_file" and write.input_schema["required"] == ["path", "content"]
    assert "undone by io.fs.restore" in (write.description or "")

    def hints(name: str) -> tuple[bool | None, ...]:
        a = tools[name].annotations
        assert a is not None
        return a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint

    #                                  readOnly destructive idempotent openWorld
    assert hints("io-fs-read_file") == (True, False, True, False)
    assert hints("io-fs-write_file") == (False, False, True, False)
    assert hints("io-fs-append_file") == (False, False, False, False)
    assert hints("io-fs-delete") == (False, True, True, False)
    assert hints("k8s-delete") == (False, True, True, False)
    assert hints("net-http-get") == (True, False, True, True)
    assert hints("net-http-request") == (False, True, False, True)
    assert hints("workflow_status")[0] is True and hints("submit_workflow")[1] is True


def test_an_allowed_call_returns_the_outputs_of_a_workflow_run_as_the_caller(
    env: DevEnvironment, kube: Kube, guarded: str
) -> None:
    namespace = guarded

    timings: list[float] = []

    async def body(session: ClientSession) -> tuple[types.CallToolResult, types.CallToolResult]:
        # A value that looks like a template arrives as sent (it goes through params, not rendered).
        started = time.monotonic()
        wrote = await session.call_tool("io-fs-write_file", {"path": "notes/a.txt", "content": "hi {{ there }}"})
        timings.append(time.monotonic() - started)
        started = time.monotonic()
        read = await session.call_tool("io-fs-read_file", {"path": "notes/a.txt"})
        timings.append(time.monotonic() - started)
        return wrote, read

    wrote, read = run("bob", env, namespace, body)
    print(f"\ntool calls over stdio, each a workflow run by the operator: {', '.join(f'{t:.2f} s' for t in timings)}")
    assert not wrote.is_error, text_of(wrote)
    assert wrote.structured_content is not None and read.structured_content is not None
    assert wrote.structured_content["phase"] == "Succeeded"
    assert wrote.structured_content["outputs"]["path"] == "notes/a.txt"
    assert read.structured_content["outputs"]["content"] == "hi {{ there }}"
    assert (env.workspaces / namespace / "notes" / "a.txt").read_text() == "hi {{ there }}"
    name = wrote.structured_content["workflow"]
    obj = kube.get("wf", name, namespace)
    assert obj["metadata"]["annotations"]["aifirst.dev/principal"] == "bob"
    assert obj["status"]["principal"] == "bob"
    assert obj["spec"]["steps"][0]["capability"] == "io.fs.write_file"


def test_a_denied_call_is_refused_with_the_policy_reason(env: DevEnvironment, kube: Kube, guarded: str) -> None:
    namespace = guarded
    (env.workspaces / namespace).mkdir(parents=True, exist_ok=True)
    (env.workspaces / namespace / "keep.txt").write_text("precious")
    result = run("bob", env, namespace, lambda s: s.call_tool("io-fs-move", {"source": "keep.txt", "destination": "x"}))
    assert result.is_error
    assert result.structured_content is not None and result.structured_content["decision"] == "DENY"
    assert f"Policy {namespace}/guards rule 1: DENY" in text_of(result)
    assert result.structured_content["reason"] == "PolicyDenied"
    assert (env.workspaces / namespace / "keep.txt").read_text() == "precious"


def test_a_gated_call_returns_the_pending_approval_at_once(env: DevEnvironment, kube: Kube, guarded: str) -> None:
    namespace = guarded
    (env.workspaces / namespace).mkdir(parents=True, exist_ok=True)
    (env.workspaces / namespace / "old.txt").write_text("old")

    async def body(session: ClientSession) -> tuple[types.CallToolResult, float]:
        started = time.monotonic()
        result = await session.call_tool("io-fs-delete", {"path": "old.txt"})
        return result, time.monotonic() - started

    result, elapsed = run("bob", env, namespace, body)
    assert not result.is_error, text_of(result)
    assert elapsed < 15, f"the call blocked {elapsed:.1f} s"  # the server waits 30 s for an end at most
    data = result.structured_content
    assert data is not None and data["phase"] == "AwaitingApproval"
    workflow, approval = data["workflow"], data["approvals"][0]["approval"]
    assert data["approvals"][0]["approvers"] == {"groups": ["approvers"]}
    assert f"kubectl patch approval {approval} -n {namespace}" in text_of(result)
    assert (env.workspaces / namespace / "old.txt").exists()

    code, err = decide(kube, namespace, approval, "Approved", "bob")  # not by the caller itself
    assert code != 0, err
    code, err = decide(kube, namespace, approval, "Approved", "alice")
    assert code == 0, err
    wait_phase(kube, namespace, workflow, "Succeeded")
    assert not (env.workspaces / namespace / "old.txt").exists()
    status = run("bob", env, namespace, lambda s: s.call_tool("workflow_status", {"name": workflow}))
    assert status.structured_content is not None and status.structured_content["phase"] == "Succeeded"
    assert status.structured_content["principal"] == "bob"
    listed = run("bob", env, namespace, lambda s: s.call_tool("list_workflows", {}))
    assert listed.structured_content is not None
    assert workflow in [w["workflow"] for w in listed.structured_content["workflows"]]


def test_the_server_can_do_no_more_than_the_identity(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    # alice may approve and read, not author workflows; agent authors in namespace agents only.
    for who in ("alice", "agent"):
        result = run(who, env, namespace, lambda s: s.call_tool("io-fs-write_file", {"path": "x", "content": "x"}))
        assert result.is_error
        assert "forbidden" in text_of(result) and 'cannot create resource "workflows"' in text_of(result)
    assert kube.run("get", "wf", "-n", namespace, "-o", "name").stdout == ""
    # A submitted manifest that claims another principal still runs as the caller.
    manifest = {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "claims-admin", "annotations": {"aifirst.dev/principal": "admin"}},
        "spec": {"steps": [{"name": "w", "capability": "io.fs.write_file", "inputs": {"path": "p", "content": "c"}}]},
    }
    submitted = run(
        "bob",
        env,
        namespace,
        lambda s: s.call_tool("submit_workflow", {"workflow": json.dumps(manifest), "waitSeconds": 20}),
    )
    assert submitted.structured_content is not None, text_of(submitted)
    assert submitted.structured_content["phase"] == "Succeeded", text_of(submitted)
    assert submitted.structured_content["principal"] == "bob"
    assert kube.get("wf", "claims-admin", namespace)["metadata"]["annotations"]["aifirst.dev/principal"] == "bob"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(env: DevEnvironment, namespace: str) -> Iterator[str]:
    """`airun mcp --transport http`, whose own kubeconfig context is the cluster admin: the test shows that
    it acts with each request's token only."""
    port = _free_port()
    argv = [sys.executable, *_server_argv(env, "--context", "admin", "-n", namespace)]
    process = subprocess.Popen(
        [*argv, "--transport", "http", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"airun mcp did not start: {process.stderr and process.stderr.read()}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _service_account(kube: Kube, namespace: str, name: str, *, author: bool) -> str:
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}, namespace=namespace)
    if author:
        kube.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{name}-author"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "airun-author"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
            namespace=namespace,
        )
    return kube.run("create", "token", name, "-n", namespace).stdout.strip()


async def _http_call(url: str, token: str, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool(tool, arguments)


def test_streamable_http_acts_with_the_callers_token_only(kube: Kube, namespace: str, http_server: str) -> None:
    assert httpx.post(http_server, json={}).status_code == 401
    assert httpx.post(http_server, json={}, headers={"Authorization": "Bearer not-a-token"}).status_code == 401

    statuses: list[int] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    async def without_token() -> None:
        async with (
            httpx2.AsyncClient(event_hooks={"response": [record]}) as http,
            streamable_http_client(http_server, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()

    with pytest.raises(BaseException, match="unhandled errors"):  # the SDK's client: an exception group
        anyio.run(without_token)
    assert statuses and set(statuses) == {401}, statuses

    author = _service_account(kube, namespace, "mcp-agent", author=True)
    arguments = {"path": "http.txt", "content": "over http"}
    result = anyio.run(_http_call, http_server, author, "io-fs-write_file", arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None and result.structured_content["phase"] == "Succeeded"
    obj = kube.get("wf", result.structured_content["workflow"], namespace)
    principal = f"system:serviceaccount:{namespace}:mcp-agent"
    assert obj["metadata"]["annotations"]["aifirst.dev/principal"] == principal
    assert obj["status"]["principal"] == principal

    # The server's own context is the cluster admin; a token without RBAC still gets nothing done.
    nobody = _service_account(kube, namespace, "mcp-nobody", author=False)
    denied = anyio.run(_http_call, http_server, nobody, "io-fs-write_file", arguments)
    assert denied.is_error
    assert f'User "system:serviceaccount:{namespace}:mcp-nobody" cannot create resource "workflows"' in text_of(denied)
