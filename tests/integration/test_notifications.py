"""Approval notifications reach a real loopback HTTP server, signed; failures are recorded, not fatal."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller.api.approval import ApprovalPhase
from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from controller.operator.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.integration.test_governance import decide, policy, wait_phase
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube


class Receiver:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.messages: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.messages.append(({k: v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= count, f"{len(self.messages)} messages, wanted {count}"
        return [json.loads(body) for _, body in self.messages]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def gated(url: str) -> dict[str, Any]:
    return wf("notified", {"name": "gate", "type": "Approval", "message": "Ship it?", "notify": {"webhookUrl": url}})


def test_requested_and_decided_are_announced_and_signed(
    kube: Kube, namespace: str, operator: DevEnvironment, receiver: Receiver
) -> None:
    # Signed because a policy rule names the URL (an author's own URL gets the message unsigned:
    # tests/security/test_egress.py).
    rule = {"capabilities": ["io.fs.write_file"], "action": "REQUIRE_APPROVAL", "notify": {"webhookUrl": receiver.url}}
    kube.apply(policy("writes-are-announced", rule), namespace=namespace)
    time.sleep(0.5)
    step = {"name": "gate", "capability": "io.fs.write_file", "inputs": {"path": "a.txt", "content": "x"}}
    kube.apply(wf("notified", step), namespace=namespace, as_="bob")
    obj = wait_phase(kube, namespace, "notified", WorkflowPhase.AWAITING_APPROVAL)
    name = steps_of(obj)["gate"]["approval"]
    first = receiver.wait(1)[0]
    assert "Approval requested by bob" in first["text"] and "io.fs.write_file" in first["text"]
    assert f"patch approval {name}" in first["text"] and first["blocks"][0]["type"] == "section"
    headers, body = receiver.messages[0]
    secret = operator.notify_secret().read_bytes().strip()
    assert headers[SIGNATURE_HEADER] == sign(secret, headers[TIMESTAMP_HEADER], body)

    assert decide(kube, namespace, name, ApprovalPhase.APPROVED, "alice")[0] == 0
    assert wait_terminal(kube, namespace, "notified")["status"]["phase"] == WorkflowPhase.SUCCEEDED
    second = receiver.wait(2)[1]
    assert second["airun"]["event"] == "decided" and second["airun"]["decidedBy"] == "alice"
    assert "approved by alice" in second["text"]


def test_a_failing_receiver_is_recorded_and_does_not_block(kube: Kube, namespace: str, operator: object) -> None:
    failing = Receiver(status=500)
    try:
        kube.apply(gated(failing.url), namespace=namespace, as_="bob")
        obj = wait_phase(kube, namespace, "notified", WorkflowPhase.AWAITING_APPROVAL)
        name = steps_of(obj)["gate"]["approval"]
        assert decide(kube, namespace, name, ApprovalPhase.APPROVED, "alice")[0] == 0
        assert wait_terminal(kube, namespace, "notified")["status"]["phase"] == WorkflowPhase.SUCCEEDED
        kube.wait_for("approval", name, namespace, lambda o: True)
        events = kube.events_of(name, namespace, contains="NotificationFailed")
        assert "NotificationFailed" in events
        assert len(failing.messages) >= 3  # retried
    finally:
        failing.server.shutdown()


def test_notifications_never_reach_the_control_plane(kube: Kube, namespace: str, operator: DevEnvironment) -> None:
    url = f"https://127.0.0.1:{operator.cluster.ports.apiserver}/api"
    kube.apply(gated(url), namespace=namespace, as_="bob")
    obj = wait_phase(kube, namespace, "notified", WorkflowPhase.AWAITING_APPROVAL)
    name = steps_of(obj)["gate"]["approval"]
    message = kube.events_of(name, namespace, field="message", contains="control plane")
    assert "refused by the egress rules" in message and "control plane" in message
