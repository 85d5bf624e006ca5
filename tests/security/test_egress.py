"""Egress against hostile destinations (issue 11, item 6): cloud metadata addresses outside link-local
space are refused, and notification URLs an author chose pass the same rules and are never signed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from controller.operator.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.integration.test_governance import wait_phase
from tests.integration.test_notifications import Receiver, gated
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.mark.parametrize("url", ["http://100.100.100.200/latest/meta-data/", "http://[fd00:ec2::254]/latest/"])
def test_metadata_service_outside_link_local_is_refused(
    kube: Kube, namespace: str, operator: DevEnvironment, url: str
) -> None:
    step = {"name": "probe", "capability": "net.http.get", "retry": {"limit": 0}, "inputs": {"url": url}}
    step["inputs"]["timeoutSeconds"] = 2
    kube.apply(wf("metadata", step), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "metadata")
    error = steps_of(obj)["probe"]["error"]
    assert "refused by the egress rules" in error and "metadata" in error, error


def test_notification_to_a_metadata_address_is_refused_and_nothing_sent(
    kube: Kube, namespace: str, operator: DevEnvironment
) -> None:
    kube.apply(gated("http://100.100.100.200/hook"), namespace=namespace, as_="bob")
    obj = wait_phase(kube, namespace, "notified", WorkflowPhase.AWAITING_APPROVAL)
    name = steps_of(obj)["gate"]["approval"]
    message = kube.events_of(name, namespace, field="message", contains="refused")
    assert "refused by the egress rules" in message and "metadata" in message, message


def test_notification_to_an_author_chosen_url_is_not_signed(
    kube: Kube, namespace: str, operator: DevEnvironment, receiver: Receiver
) -> None:
    kube.apply(gated(receiver.url), namespace=namespace, as_="bob")
    wait_phase(kube, namespace, "notified", WorkflowPhase.AWAITING_APPROVAL)
    receiver.wait(1)
    headers, _ = receiver.messages[0]
    assert SIGNATURE_HEADER not in headers and TIMESTAMP_HEADER in headers
