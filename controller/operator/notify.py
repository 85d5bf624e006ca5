"""Approval notifications: a Slack-compatible JSON message to a webhook URL (from the policy rule or the
step) when an approval is requested and when it is decided. Sent in the background with retries, never
blocking reconciliation; a failed delivery is recorded as a Warning event on the Approval and is otherwise
harmless. Every URL passes the egress rules (checked before sending, and again on connecting).

Only a URL that a policy rule names (a ClusterPolicy's, or a Policy's of the approval's namespace) is sent
signed with the operator's notification key (HMAC-SHA256): a receiver that trusts the signature trusts
the policy's authors. A URL the workflow's author chose (step.notify.webhookUrl) still gets the message,
unsigned, so the key never vouches for a message to, or through, a place an author picked."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from controller.api.approval import ApprovalNotice, ApprovalPhase
from controller.api.policy import PolicyObject
from controller.capabilities.egress import EgressRefused, EgressRules, http_client
from controller.capabilities.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Notifier", "approval_message", "policy_urls", "sign"]

log = logging.getLogger("airun.notify")


def approval_message(event: ApprovalNotice, approval: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec, status = approval.get("metadata", {}), approval.get("spec", {}), approval.get("status") or {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    what = f"step *{spec.get('step')}* of workflow *{ns}/{spec.get('workflow')}*"
    if spec.get("capability"):
        what += f" runs `{spec['capability']}` ({spec.get('riskLevel', '?')} risk)"
    if event is ApprovalNotice.REQUESTED:
        text = (
            f":raised_hand: Approval requested by {spec.get('requestedBy') or 'unknown'}: {what}.\n"
            f"{spec.get('message', '')}\n"
            f"`kubectl -n {ns} patch approval {name} --type merge -p "
            f'\'{{"spec":{{"decision":"{ApprovalPhase.APPROVED}"}}}}\'`'
        )
    else:
        phase = status.get("phase") or spec.get("decision") or event
        by = f" by {status['decidedBy']}" if status.get("decidedBy") else ""
        text = f"Approval {ns}/{name} {phase.lower()}{by}: {what}."
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "airun": {
            "event": event.value,
            "approval": name,
            "namespace": ns,
            "workflow": spec.get("workflow"),
            "step": spec.get("step"),
            "phase": status.get("phase"),
            "decidedBy": status.get("decidedBy"),
        },
    }


def policy_urls(policies: Iterable[PolicyObject], namespace: str) -> set[str]:
    """The notification URLs that policy rules name for approvals of NAMESPACE: the only ones signed."""
    return {
        rule.notify.webhook_url
        for policy in policies
        if policy.namespace in (None, namespace)
        for rule in policy.spec.rules
        if rule.notify and rule.notify.webhook_url
    }


@dataclass
class Delivery:
    url: str
    payload: dict[str, Any]
    on_failure: Callable[[str], None]
    namespace: str = ""


class Notifier:
    def __init__(self, secret: bytes, egress: EgressRules, *, attempts: int = 3, timeout: float = 5.0) -> None:
        self.secret = secret
        self.egress = egress
        self.attempts = attempts
        self.timeout = timeout
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=1000)
        self._task: asyncio.Task[None] | None = None
        # The URLs that policies name for a namespace (the operator points it at its policy index).
        self.signed_urls: Callable[[str], Collection[str]] = lambda namespace: ()

    def send(
        self, url: str, payload: dict[str, Any], on_failure: Callable[[str], None], *, namespace: str = ""
    ) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._work(), name="approval notifications")
        try:
            self.queue.put_nowait(Delivery(url, payload, on_failure, namespace))
        except asyncio.QueueFull:
            on_failure("notification queue full; message dropped")

    async def _work(self) -> None:
        async with http_client(self.egress, timeout=self.timeout, follow_redirects=False) as client:
            while True:
                delivery = await self.queue.get()
                error = await self._deliver(client, delivery)
                if error:
                    log.warning("notification to %s failed: %s", delivery.url, error)
                    delivery.on_failure(error)

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> str | None:
        try:
            await self.egress.check_url(delivery.url)
        except EgressRefused as refused:
            return f"refused by the egress rules: {refused}"
        body = json.dumps(delivery.payload).encode()
        signed = delivery.url in self.signed_urls(delivery.namespace)
        error = "not sent"
        for attempt in range(1, self.attempts + 1):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
            if signed:
                headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
            try:
                response = await client.post(delivery.url, content=body, headers=headers)
                if response.status_code < 300:
                    return None
                error = f"HTTP {response.status_code}"
            except (httpx.HTTPError, EgressRefused) as exc:  # EgressRefused: checked again on connecting
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        return f"{error} after {self.attempts} attempts"

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
