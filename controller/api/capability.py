"""Pydantic model of a capability spec (capabilities/*.yaml and the Capability custom resource)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RiskLevel(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return list(RiskLevel).index(self)


class Risk(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: RiskLevel
    reason: str


class CompensationSpec(BaseModel):
    """How to undo the capability: another capability and its inputs, rendered from the step's
    `inputs`, `outputs` and `idempotencyKey`; it must be safe when the action never happened. Or
    `fromStep: true`: only the step knows the inverse (an HTTP API's DELETE for its POST), so every step
    must declare its own `compensation` (or say `irreversible: true`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    capability: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    from_step: bool = Field(False, alias="fromStep")

    @model_validator(mode="after")
    def _one_way(self) -> CompensationSpec:
        if bool(self.capability) == self.from_step:
            raise ValueError("compensation names either a capability or fromStep: true")
        return self


class HttpAuthType(StrEnum):
    BEARER = "Bearer"  # Authorization: Bearer <the Secret's value>
    HMAC = "HMAC"  # X-Airun-Signature: sha256=HMAC(value, "<X-Airun-Timestamp>.<body>")


class SecretKeySelector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


class HttpAuth(BaseModel):
    """How the endpoint tells the operator from other callers. The Secret is always read from the
    operator's own namespace, never from a namespace the Capability's author names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: HttpAuthType
    secret_ref: SecretKeySelector = Field(alias="secretRef")


class HttpEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    method: str = "POST"
    url: str
    timeout_seconds: float = Field(30.0, alias="timeoutSeconds")
    auth: HttpAuth | None = None


class CapabilitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    version: str = "1"
    description: str
    risk: Risk
    side_effects: list[str] = Field(default_factory=list, alias="sideEffects")
    idempotent: bool
    # Whether the handler sends the step's idempotency key as the `Idempotency-Key` header, so that a step
    # may declare `idempotent: true` when its remote API honours it (custom HTTP capabilities always do).
    sends_idempotency_key: bool = Field(False, alias="sendsIdempotencyKey")
    inputs: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    outputs: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    compensation: CompensationSpec | None = None
    internal: bool = Field(False, description="Only used as another capability's compensation.")
    http: HttpEndpoint | None = None

    @property
    def honours_step_idempotency(self) -> bool:
        """Whether a step of this capability may say `idempotent: true`: its requests carry the key."""
        return self.sends_idempotency_key or self.http is not None
