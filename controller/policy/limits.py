"""Rate limits and circuit breakers of policies (pure): what counts, and what the counts decide.

A policy's `limits:` allow at most `max` steps of one principal on capabilities matching a glob within any
window of `perSeconds` (a sliding window: each step counted by when it started). The counts themselves live
in the cluster (controller/operator/limits.py keeps them in ConfigMaps, written with resourceVersion
preconditions): this module only says which limits apply to a step and what a window of recorded steps
allows. Each entry carries a digest of the step's idempotency key, so a step counted before a restart of
the operator is not counted twice.

A policy's `breaker:` opens for a principal after `denials` denied steps within `perSeconds`; while it is
open the principal's new Workflows are refused at admission, until someone resets it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from controller.api.policy import Breaker, Limit, PolicyMode, PolicyObject, Principal
from controller.policy.evaluate import applicable, principal_matches

Entry = tuple[float, str]  # (seconds since the epoch, digest of what was counted)
STATE_LABEL = "aifirst.dev/state"  # on the ConfigMaps that hold the counts and the breakers
BREAKERS = "airun-breakers"  # the one ConfigMap of the breakers (its keys: principal_key)


def principal_key(principal: str) -> str:
    """The key of PRINCIPAL's entry in the breakers' ConfigMap."""
    return "p-" + hashlib.sha256(principal.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AppliedLimit:
    """LIMIT (the INDEX-th of POLICY) as it applies to one principal: counted apart for each."""

    policy: str
    index: int
    limit: Limit
    principal: str

    @property
    def key(self) -> str:
        return f"{self.policy}|limits[{self.index}]|{self.principal}"

    @property
    def name(self) -> str:
        """A stable object name for its counts."""
        return "airun-limit-" + hashlib.sha256(self.key.encode()).hexdigest()[:32]

    def describe(self) -> str:
        caps = ", ".join(self.limit.capabilities)
        return (
            f"{self.policy} limits[{self.index}]: at most {self.limit.max} steps of {self.principal} on {caps} "
            f"per {self.limit.per_seconds} s"
        )


@dataclass(frozen=True)
class Window:
    """What a window allows: ENTRIES to write (None: nothing to write), or RETRY_AFTER seconds to wait."""

    entries: list[Entry] | None
    retry_after: float | None = None

    @property
    def allowed(self) -> bool:
        return self.retry_after is None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def limits_for(
    policies: Sequence[PolicyObject], principal: Principal, namespace: str, capability: str
) -> list[AppliedLimit]:
    """The limits of the Enforce policies that apply here whose principal and capability globs match."""
    found = []
    for policy in applicable(policies, namespace):
        if policy.spec.mode is not PolicyMode.ENFORCE:
            continue
        for index, limit in enumerate(policy.spec.limits):
            if principal_matches(limit.principal, principal) and any(
                fnmatchcase(capability, glob) for glob in limit.capabilities
            ):
                found.append(AppliedLimit(policy.ref, index, limit, principal.user))
    return found


def admit(entries: Sequence[Entry], limit: Limit, now: float, key: str) -> Window:
    """Whether one more step (KEY: its idempotency key) fits the window that ends NOW. Entries that left
    the window are dropped; a step counted already (same key) is allowed again without counting."""
    start = now - limit.per_seconds
    kept = [(at, d) for at, d in entries if at > start]
    mine = digest(key)
    if any(d == mine for _, d in kept):
        return Window(kept if len(kept) != len(entries) else None)
    if len(kept) >= limit.max:
        oldest = min(at for at, _ in kept)
        return Window(None, max(0.0, oldest + limit.per_seconds - now))
    return Window([*kept, (now, mine)])


def release(entries: Sequence[Entry], key: str) -> list[Entry] | None:
    """ENTRIES without KEY's (a step counted, then refused by another limit); None when it is not there."""
    mine = digest(key)
    kept = [(at, d) for at, d in entries if d != mine]
    return kept if len(kept) != len(entries) else None


# -- breakers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedBreaker:
    policy: str
    breaker: Breaker


def breakers_for(policies: Sequence[PolicyObject], namespace: str) -> list[AppliedBreaker]:
    """The breakers of the Enforce policies that apply in NAMESPACE."""
    return [
        AppliedBreaker(p.ref, p.spec.breaker)
        for p in applicable(policies, namespace)
        if p.spec.breaker is not None and p.spec.mode is PolicyMode.ENFORCE
    ]


def opens(denials: Sequence[float], breaker: Breaker, now: float) -> bool:
    """Whether DENIALS (when each was decided) open BREAKER at NOW."""
    return sum(1 for at in denials if at > now - breaker.per_seconds) >= breaker.denials
