"""`airun mcp`: an MCP server (the official MCP SDK, low-level server: the tools are the capabilities,
known at run time) whose every tool call becomes a governed Workflow created as the caller."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import anyio
import mcp_types as types
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from controller import API_GROUP, API_VERSION, __version__
from controller.api.approval import ApprovalPhase
from controller.api.capability import CapabilitySpec
from controller.api.transaction import FINISHED_PHASES, TransactionPhase
from controller.api.workflow import TERMINAL_PHASES, WorkflowPhase
from controller.client import undo
from controller.client.capabilities import catalogue
from controller.client.workflows import (
    NotAWorkflow,
    pending_approvals,
    reason_of,
    summary,
    workflow_from_text,
)
from controller.mcp import tools
from controller.mcp.kube import BearerTokenIdentity, Identity, IdentityError, KubeconfigIdentity

INSTRUCTIONS = """\
AI-First Runtime: each tool call becomes a Workflow in Kubernetes, created under YOUR identity. The
cluster's policies decide whether it runs, asks a person, or is denied; everything is audited, and changes
are compensated (undone) when a workflow fails. A call that needs approval returns the pending Approval's
name and the workflow's name at once: a person (not you) approves it, then call workflow_status."""


MERGE_PATCH = "application/merge-patch+json"  # kubernetes_asyncio sends a JSON patch unless told


APPROVAL_FOLLOWS_SECONDS = 3.0


async def _approval(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    """The Approval NAME, None if the caller may not read it (the name and the command are enough then).
    The operator checkpoints a step as AwaitingApproval before it creates the Approval (write-ahead), so
    it may not exist yet: a 404 is asked again for a few seconds."""
    deadline = time.monotonic() + APPROVAL_FOLLOWS_SECONDS
    while True:
        try:
            found: dict[str, Any] = await custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, "approvals", name
            )
            return found
        except ApiException as error:
            if error.status != 404 or time.monotonic() >= deadline:
                return None
        await anyio.sleep(0.1)


@dataclass
class Settings:
    namespace: str
    wait_seconds: float = 30.0
    include_test_capabilities: bool = False


@cache
def _builtin(include_test: bool) -> dict[str, CapabilitySpec]:
    return catalogue([], include_test=include_test)


def _result(text: str, data: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    body = f"{text}\n{json.dumps(data, indent=2, default=str)}"
    return types.CallToolResult(content=[types.TextContent(text=body)], structured_content=data, is_error=error)


def _approve_command(namespace: str, approval: str) -> str:
    patch = json.dumps({"spec": {"decision": ApprovalPhase.APPROVED}})
    return f"kubectl patch approval {approval} -n {namespace} --type merge -p '{patch}'"


class AirunTools:
    """The handlers. IDENTITY gives an API client acting as the caller of each request."""

    def __init__(self, identity: Identity, settings: Settings) -> None:
        self.identity = identity
        self.settings = settings
        self._agent_tools: dict[str, Callable[[Any, Any, dict[str, Any]], Awaitable[types.CallToolResult]]] = {
            tools.UNDO: self._undo,
            tools.BEGIN_TRANSACTION: self._begin,
            tools.COMMIT_TRANSACTION: self._commit,
            tools.ROLLBACK_TRANSACTION: self._rollback,
            tools.TRANSACTION_STATUS: self._transaction_status,
        }

    async def _capabilities(self, api: client.ApiClient) -> dict[str, CapabilitySpec]:
        try:
            found: Any = await client.CustomObjectsApi(api).list_cluster_custom_object(
                API_GROUP, API_VERSION, "capabilities"
            )
            items = found.get("items", [])
        except ApiException:
            items = []  # the caller may not read them: the built-in ones remain
        if not items:
            return _builtin(self.settings.include_test_capabilities)
        return catalogue(items, include_test=self.settings.include_test_capabilities)

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        async with self.identity.client(ctx.request) as api:
            specs = await self._capabilities(api)
        return types.ListToolsResult(tools=tools.all_tools(specs))

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = params.arguments or {}
        try:
            async with self.identity.client(ctx.request) as api:
                custom = client.CustomObjectsApi(api)
                if params.name == tools.SUBMIT_WORKFLOW:
                    return await self._submit(custom, arguments)
                if params.name == tools.WORKFLOW_STATUS:
                    return await self._status(custom, arguments)
                if params.name == tools.LIST_WORKFLOWS:
                    return await self._list(custom, arguments)
                if params.name in self._agent_tools:
                    return await self._agent_tools[params.name](api, custom, arguments)
                capability = tools.capability_id(params.name)
                spec = (await self._capabilities(api)).get(capability or "")
                if spec is None or spec.internal:
                    return _result(f"unknown tool {params.name!r}", {"tool": params.name}, error=True)
                return await self._call_capability(custom, spec, arguments)
        except ApiException as error:
            # The API server's word, as the caller: forbidden, not found, invalid.
            return _result(reason_of(error), {"status": error.status, "reason": reason_of(error)}, error=True)
        except (IdentityError, NotAWorkflow, ValueError) as error:
            return _result(str(error), {"reason": str(error)}, error=True)

    def _namespace(self, arguments: dict[str, Any]) -> str:
        return str(arguments.get("namespace") or self.settings.namespace)

    async def _call_capability(
        self, custom: client.CustomObjectsApi, spec: CapabilitySpec, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        namespace = self.settings.namespace
        inputs, transaction = tools.split_arguments(arguments)
        created: Any = await custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            namespace,
            "workflows",
            tools.one_step_workflow(spec, inputs, transaction=transaction),
        )
        obj = await self._wait(custom, created, self.settings.wait_seconds)
        state = summary(obj)
        name = state["workflow"]
        base: dict[str, Any] = {"workflow": name, "namespace": namespace, "phase": state["phase"]}
        if transaction:
            base["transaction"] = transaction
        if state["phase"] is WorkflowPhase.SUCCEEDED:
            outputs = state["steps"][0].get("outputs", {}) if state["steps"] else {}
            return _result(f"{spec.id} succeeded (workflow {namespace}/{name})", {**base, "outputs": outputs})
        if state["phase"] in TERMINAL_PHASES:
            step: dict[str, Any] = state["steps"][0] if state["steps"] else {}
            failure: dict[str, Any] = {
                **base,
                **{k: state[k] for k in ("reason", "message") if k in state},
                **{k: step[k] for k in ("decision", "policy", "error") if k in step},
            }
            why = step.get("error") or state.get("message") or state["phase"]
            text = f"{spec.id} did not run to success (workflow {namespace}/{name}): {why}"
            return _result(text, failure, error=True)
        pending = pending_approvals(obj)
        if pending:
            return await self._awaiting(custom, namespace, name, pending, base)
        return _result(
            f"{spec.id} still runs after {self.settings.wait_seconds:g} s: follow it with {tools.WORKFLOW_STATUS}",
            {**base, "next": f"{tools.WORKFLOW_STATUS} name={name}"},
        )

    async def _awaiting(
        self,
        custom: client.CustomObjectsApi,
        namespace: str,
        name: str,
        pending: dict[str, str],
        base: dict[str, Any],
    ) -> types.CallToolResult:
        approvals = []
        for step, approval in pending.items():
            entry: dict[str, Any] = {"step": step, "approval": approval}
            entry["approve"] = _approve_command(namespace, approval)
            obj = await _approval(custom, namespace, approval)
            if obj is not None:
                spec = obj.get("spec") or {}
                entry.update({k: spec[k] for k in ("message", "approvers", "expiresAt") if spec.get(k)})
            approvals.append(entry)
        first = approvals[0]
        text = (
            f"Waiting for approval {first['approval']} (workflow {namespace}/{name}). A person allowed to approve "
            f"(not you) runs: {first['approve']}  (or: airun approve {first['approval']} -n {namespace}). "
            f"Then call {tools.WORKFLOW_STATUS} with name={name}."
        )
        return _result(text, {**base, "phase": WorkflowPhase.AWAITING_APPROVAL, "approvals": approvals})

    async def _wait(
        self,
        custom: client.CustomObjectsApi,
        created: dict[str, Any],
        seconds: float,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The workflow once it ended or waits for an approval (or UNTIL says so), or as it is after SECONDS
        (a watch)."""
        meta = created["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        latest = created

        def decided(obj: dict[str, Any]) -> bool:
            if until is not None:
                return until(obj)
            return (obj.get("status") or {}).get("phase") in TERMINAL_PHASES or bool(pending_approvals(obj))

        with anyio.move_on_after(seconds):
            while not decided(latest):
                version = latest["metadata"].get("resourceVersion")
                try:
                    async with watch.Watch() as stream:
                        async for event in stream.stream(
                            custom.list_namespaced_custom_object,
                            API_GROUP,
                            API_VERSION,
                            namespace,
                            "workflows",
                            field_selector=f"metadata.name={name}",
                            resource_version=version,
                            timeout_seconds=max(1, int(seconds)),
                        ):
                            if event["type"] in ("ADDED", "MODIFIED"):
                                latest = dict(event["object"])
                                if decided(latest):
                                    return latest
                except ApiException as error:
                    if error.status != 410:  # 410 Gone: the version is too old, read it again
                        raise
                latest = await custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "workflows", name)
        if not decided(latest):
            latest = await custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "workflows", name)
        return latest

    async def _submit(self, custom: client.CustomObjectsApi, arguments: dict[str, Any]) -> types.CallToolResult:
        source = arguments.get("workflow")
        manifest = source if isinstance(source, dict) else workflow_from_text(str(source or ""), "the workflow")
        namespace = (manifest.get("metadata") or {}).get("namespace") or self._namespace(arguments)
        created: Any = await custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "workflows", manifest
        )
        wait = min(float(arguments.get("waitSeconds") or 0), self.settings.wait_seconds)
        obj = await self._wait(custom, created, wait) if wait > 0 else created
        return await self._report(custom, obj, f"workflow {namespace}/{created['metadata']['name']} created")

    async def _status(self, custom: client.CustomObjectsApi, arguments: dict[str, Any]) -> types.CallToolResult:
        namespace = self._namespace(arguments)
        obj: Any = await custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "workflows", str(arguments.get("name") or "")
        )
        return await self._report(custom, obj, f"workflow {namespace}/{obj['metadata']['name']}")

    async def _report(self, custom: client.CustomObjectsApi, obj: dict[str, Any], title: str) -> types.CallToolResult:
        state = summary(obj)
        namespace = state["namespace"]
        pending = pending_approvals(obj)
        if pending:
            state["approvals"] = [
                {"step": step, "approval": approval, "approve": _approve_command(namespace, approval)}
                for step, approval in pending.items()
            ]
        why = f" ({state['reason']})" if state.get("reason") else ""
        failed = state["phase"] in TERMINAL_PHASES and state["phase"] is not WorkflowPhase.SUCCEEDED
        return _result(f"{title}: {state['phase']}{why}", state, error=failed)

    async def _list(self, custom: client.CustomObjectsApi, arguments: dict[str, Any]) -> types.CallToolResult:
        namespace = self._namespace(arguments)
        found: Any = await custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "workflows")
        items = sorted(found.get("items", []), key=lambda o: o["metadata"].get("creationTimestamp", ""), reverse=True)
        rows = [
            {
                "workflow": o["metadata"]["name"],
                "phase": (o.get("status") or {}).get("phase") or WorkflowPhase.PENDING,
                **{k: (o.get("status") or {})[k] for k in ("reason", "principal") if (o.get("status") or {}).get(k)},
                "created": o["metadata"].get("creationTimestamp"),
            }
            for o in items
        ]
        return _result(f"{len(rows)} workflows in {namespace}", {"namespace": namespace, "workflows": rows})

    # -- agents' transactions (DESIGN section 6) -------------------------------------------------------------

    async def _whoami(self, api: client.ApiClient) -> str:
        review = await client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
        )
        return str(review.status.user_info.username)

    async def _undo(self, api: client.ApiClient, custom: Any, arguments: dict[str, Any]) -> types.CallToolResult:
        """The caller's own last COUNT calls, newest completion first, one after the other."""
        namespace = self.settings.namespace
        count = int(arguments.get("count") or 1)
        if count < 1:
            raise ValueError("count must be 1 or more")
        me = await self._whoami(api)  # the API server says who the caller is; the operator recorded whose calls are
        listed: Any = await custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "workflows")
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.settings.wait_seconds
        for obj in undo.candidates(listed.get("items", []), me, count):
            name = obj["metadata"]["name"]
            patched: Any = await custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, "workflows", name, undo.ROLLBACK_PATCH, _content_type=MERGE_PATCH
            )
            left = max(1.0, deadline - time.monotonic())
            after = await self._wait(custom, patched, left, until=lambda o: summary(o)["phase"] in undo.UNDO_FINISHED)
            results.append(undo.entry(after))
            if results[-1]["phase"] != "Compensated":
                break
        data = {"principal": me, "namespace": namespace, "undone": results}
        if not results:
            return _result(f"nothing of {me} to undo in {namespace}", data)
        failed = results[-1]["phase"] != "Compensated"
        text = "\n".join(("undone " if r["phase"] == "Compensated" else "NOT undone ") + undo.line(r) for r in results)
        return _result(text, data, error=failed)

    async def _transaction(self, custom: Any, arguments: dict[str, Any]) -> tuple[str, str]:
        name = str(arguments.get("transaction") or "")
        if not name:
            raise ValueError("transaction: the id begin_transaction returned")
        return self.settings.namespace, name

    async def _begin(self, api: client.ApiClient, custom: Any, arguments: dict[str, Any]) -> types.CallToolResult:
        namespace = self.settings.namespace
        spec: dict[str, Any] = {"description": str(arguments.get("name") or "")}
        if arguments.get("ttlSeconds") is not None:
            spec["ttlSeconds"] = int(arguments["ttlSeconds"])
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "Transaction",
            "metadata": {"generateName": "tx-", "labels": dict(tools.MANAGED_BY)},
            "spec": spec,
        }
        created: Any = await custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "transactions", body
        )
        name = created["metadata"]["name"]
        ttl = created["spec"].get("ttlSeconds")
        data = {"transaction": name, "namespace": namespace, "ttlSeconds": ttl, "description": spec["description"]}
        text = (
            f"transaction {name} begun (rolled back by the operator if still open after {ttl} s): pass "
            f'"transaction": "{name}" to the tool calls that belong to it, then {tools.COMMIT_TRANSACTION} or '
            f"{tools.ROLLBACK_TRANSACTION}"
        )
        return _result(text, data)

    async def _follow_transaction(
        self, custom: Any, namespace: str, name: str, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.wait_seconds
        while True:
            obj: Any = await custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, "transactions", name
            )
            if done(obj) or time.monotonic() >= deadline:
                return dict(obj)
            await anyio.sleep(0.25)

    async def _end(self, custom: Any, arguments: dict[str, Any], field: str) -> dict[str, Any]:
        namespace, name = await self._transaction(custom, arguments)
        await custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "transactions", name, {"spec": {field: True}}, _content_type=MERGE_PATCH
        )

        def ended(obj: dict[str, Any]) -> bool:
            phase = (obj.get("status") or {}).get("phase")
            if field == "commit":
                return phase != TransactionPhase.OPEN.value and phase is not None
            return phase in {p.value for p in FINISHED_PHASES}

        return await self._follow_transaction(custom, namespace, name, ended)

    async def _commit(self, api: client.ApiClient, custom: Any, arguments: dict[str, Any]) -> types.CallToolResult:
        state = transaction_summary(await self._end(custom, arguments, "commit"))
        ok = state["phase"] == TransactionPhase.COMMITTED.value
        text = f"transaction {state['transaction']}: {state['phase']} with {len(state['calls'])} calls"
        return _result(text, state, error=not ok)

    async def _rollback(self, api: client.ApiClient, custom: Any, arguments: dict[str, Any]) -> types.CallToolResult:
        state = transaction_summary(await self._end(custom, arguments, "rollback"))
        phase = state["phase"]
        lines = [
            f"transaction {state['transaction']}: {phase}" + (f" ({state['message']})" if state.get("message") else "")
        ]
        by_name = {c["workflow"]: c for c in state["calls"]}
        for name in state["undone"]:
            call = by_name.get(name, {})
            lines.append(f"  undone {name} ({call.get('capability')}) by {call.get('undo') or 'nothing to undo'}")
        if phase == TransactionPhase.ROLLING_BACK.value:
            lines.append(f"  still rolling back: follow it with {tools.TRANSACTION_STATUS}")
        return _result("\n".join(lines), state, error=phase == TransactionPhase.ROLLBACK_FAILED.value)

    async def _transaction_status(
        self, api: client.ApiClient, custom: Any, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        namespace, name = await self._transaction(custom, arguments)
        obj: Any = await custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "transactions", name)
        state = transaction_summary(obj)
        return _result(f"transaction {name}: {state['phase']}", state)


def transaction_summary(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    return {
        "transaction": meta.get("name"),
        "namespace": meta.get("namespace"),
        "description": (obj.get("spec") or {}).get("description", ""),
        "phase": status.get("phase") or TransactionPhase.OPEN.value,
        **{
            k: status[k]
            for k in ("reason", "message", "principal", "expiresAt", "rollbackRequestedBy")
            if status.get(k)
        },
        "calls": status.get("calls") or [],
        "undone": status.get("undone") or [],
    }


def build_server(identity: Identity, settings: Settings) -> Server[Any]:
    handlers = AirunTools(identity, settings)
    return Server(
        "airun",
        version=__version__,
        title="AI-First Runtime",
        instructions=INSTRUCTIONS,
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
    )


async def serve_stdio(kubeconfig: str | None, context: str | None, settings: Settings) -> None:
    from mcp.server.stdio import stdio_server

    identity = await KubeconfigIdentity.load(kubeconfig, context)
    server = build_server(identity, settings)
    try:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        await identity.close()


async def serve_http(kubeconfig: str | None, context: str | None, settings: Settings, *, bind: str, port: int) -> None:
    import uvicorn
    from mcp.server.auth.settings import AuthSettings

    identity = await BearerTokenIdentity.load(kubeconfig, context)
    server = build_server(identity, settings)
    app = server.streamable_http_app(
        host=bind,
        # The API server authenticates the tokens (it is where they come from); no OAuth endpoints here.
        auth=AuthSettings(issuer_url=identity.server, resource_server_url=None, required_scopes=[]),  # type: ignore[arg-type]
        token_verifier=identity,
    )
    print(f"MCP endpoint: http://{bind}:{port}/mcp (Authorization: Bearer <Kubernetes token>)", file=sys.stderr)
    await uvicorn.Server(uvicorn.Config(app, host=bind, port=port, log_level="warning")).serve()
