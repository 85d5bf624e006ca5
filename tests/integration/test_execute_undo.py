"""`airun execute` (one governed call) and `airun undo` (the caller's own last calls, newest first), run as
a user runs them, against the real API server and operator."""

from __future__ import annotations

import json
from typing import Any

from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_cli import airun
from tests.kube import Kube

AGENT = "system:serviceaccount:agents:planner"


def execute(env: DevEnvironment, who: str, namespace: str, capability: str, params: dict[str, Any], *more: str) -> Any:
    return airun(env, "execute", capability, "--params", json.dumps(params), "--context", who, "-n", namespace, *more)


def test_execute_prints_the_outputs_and_the_exit_code_says_how_it_ended(
    env: DevEnvironment, kube: Kube, guarded: str
) -> None:
    namespace = guarded
    ok = execute(env, "bob", namespace, "io.fs.write_file", {"path": "a.txt", "content": "one {{ x }}"})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"path": "a.txt", "bytes": 11, "created": True}
    assert (env.workspaces / namespace / "a.txt").read_text() == "one {{ x }}"
    as_json = execute(env, "bob", namespace, "io.fs.read_file", {"path": "a.txt"}, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["phase"] == "Succeeded" and data["outputs"]["content"] == "one {{ x }}"
    obj = kube.get("wf", data["workflow"], namespace)
    assert obj["status"]["principal"] == "bob" and obj["spec"]["steps"][0]["capability"] == "io.fs.read_file"

    denied = execute(env, "bob", namespace, "io.fs.move", {"source": "a.txt", "destination": "b.txt"})
    assert denied.returncode == 1
    assert f"Policy {namespace}/guards rule 1: DENY" in denied.stderr
    assert (env.workspaces / namespace / "a.txt").exists()

    gated = execute(env, "bob", namespace, "io.fs.delete", {"path": "a.txt"}, "--timeout", "20")
    assert gated.returncode == 3, gated.stderr
    assert f'-n {namespace} --type merge -p \'{{"spec": {{"decision": "Approved"}}}}\'' in gated.stdout
    assert "kubectl patch approval call-io-fs-delete-" in gated.stdout
    gated_json = execute(env, "bob", namespace, "io.fs.delete", {"path": "a.txt"}, "-o", "json", "--timeout", "20")
    assert gated_json.returncode == 3 and json.loads(gated_json.stdout)["phase"] == "AwaitingApproval"

    failed = execute(env, "bob", namespace, "io.fs.write_file", {"path": "../escape.txt", "content": "x"})
    assert failed.returncode == 1 and "did not succeed" in failed.stderr
    unknown = execute(env, "bob", namespace, "io.fs.nothing", {})
    assert unknown.returncode == 1 and "unknown capability 'io.fs.nothing'" in unknown.stderr
    refused = execute(env, "alice", namespace, "io.fs.write_file", {"path": "x", "content": "x"})
    assert refused.returncode == 1 and 'User "alice" cannot create resource "workflows"' in refused.stderr


def test_undo_compensates_the_callers_own_last_calls_newest_first(
    env: DevEnvironment, kube: Kube, guarded: str
) -> None:
    namespace = guarded
    workspace = env.workspaces / namespace
    for path in ("a.txt", "b.txt"):
        assert execute(env, "bob", namespace, "io.fs.write_file", {"path": path, "content": path}).returncode == 0
    assert execute(env, "bob", namespace, "io.fs.read_file", {"path": "b.txt"}).returncode == 0  # nothing to undo
    # Another principal's call comes last, and one of its workflows claims to be bob's: neither is bob's to undo.
    assert execute(env, "agent", namespace, "io.fs.write_file", {"path": "c.txt", "content": "c"}).returncode == 0
    forged = {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "claims-bob", "annotations": {"aifirst.dev/principal": "bob"}},
        "spec": {
            "steps": [{"name": "w", "capability": "io.fs.write_file", "inputs": {"path": "d.txt", "content": "d"}}]
        },
    }
    kube.apply(forged, namespace=namespace, as_="agent")
    kube.wait_for("wf", "claims-bob", namespace, lambda o: o.get("status", {}).get("phase") == "Succeeded")

    one = airun(env, "undo", "--context", "bob", "-n", namespace)
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith(f"undone {namespace}/call-io-fs-write-file-")
    assert "(io.fs.write_file): Compensated: write_file by io.fs.restore (Compensated)" in one.stdout
    assert not (workspace / "b.txt").exists() and (workspace / "a.txt").exists()

    rest = airun(env, "undo", "5", "--context", "bob", "-n", namespace, "-o", "json")
    assert rest.returncode == 0, rest.stderr
    report = json.loads(rest.stdout)
    assert report["principal"] == "bob" and [u["phase"] for u in report["undone"]] == ["Compensated"]
    assert report["undone"][0]["undone"] == [{"step": "write_file", "undo": "io.fs.restore", "phase": "Compensated"}]
    assert not (workspace / "a.txt").exists()
    assert (workspace / "c.txt").read_text() == "c" and (workspace / "d.txt").read_text() == "d"
    assert kube.get("wf", "claims-bob", namespace)["status"]["principal"] == AGENT

    nothing = airun(env, "undo", "--context", "bob", "-n", namespace)
    assert nothing.returncode == 0 and f"nothing of bob to undo in {namespace}" in nothing.stdout
    theirs = airun(env, "undo", "2", "--context", "agent", "-n", namespace)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout.count("undone ") == 2 and "claims-bob" in theirs.stdout.splitlines()[0]
    assert not (workspace / "c.txt").exists() and not (workspace / "d.txt").exists()
