"""What a capability handler receives and may raise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the gateway's module imports this one
    from controller.capabilities.handlers.k8s import KubeGateway


class CapabilityError(Exception):
    """A handler's failure. RETRYABLE false means a repeat cannot help (bad input, refused path)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Invocation:
    namespace: str
    workflow: str
    step: str
    idempotency_key: str
    attempt: int
    workspace: Path  # the io.fs root of this namespace (its .airun/ holds snapshots)
    principal: str = ""  # the workflow's principal, from the API server's authentication
    groups: tuple[str, ...] = ()
    kube: KubeGateway | None = None  # the API as the principal (k8s.*, secrets); None where there is none
    workflow_uid: str = ""  # snapshots are kept per workflow uid, and collected with the workflow
    # For a compensation: whether the step it undoes may never have run (it was cut off, or in doubt
    # after a restart). Only then may a missing snapshot mean "nothing to undo"; for a completed step a
    # missing snapshot is a loss, and the compensation fails.
    forward_in_doubt: bool = False


Handler = Callable[[dict[str, Any], Invocation], Awaitable[dict[str, Any]]]
