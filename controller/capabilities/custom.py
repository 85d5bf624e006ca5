"""Custom capabilities from Capability objects: an HTTP endpoint per capability, no Python.

An endpoint can authenticate the operator (spec.http.auth): a bearer token, or an HMAC signature of each
request's body, from a Secret of the operator's own namespace. The namespace is the operator's, never one
the Capability names, so writing a Capability cannot make the operator read anybody else's Secret; the
operator may read Secrets of its own namespace only (a Role there)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from controller.api.capability import CapabilitySpec, HttpAuth, HttpAuthType
from controller.api.workflow import WorkflowSpec
from controller.capabilities import secrets
from controller.capabilities.base import CapabilityError, Handler, Invocation
from controller.capabilities.handlers.http import call_endpoint
from controller.capabilities.handlers.k8s import KubeGateway
from controller.capabilities.registry import risk_problems
from controller.capabilities.signing import signed_headers

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LOCAL_NAMESPACE = "airun-system"  # the local environment's operator (controller/localcluster)
CREDENTIAL_TTL = 30.0  # seconds a credential is reused: a rotated Secret takes effect this soon


class InvalidCapability(ValueError):
    pass


def operator_namespace() -> str:
    """AIRUN_OPERATOR_NAMESPACE, else the Pod's ServiceAccount namespace, else the local environment's."""
    if os.environ.get("AIRUN_OPERATOR_NAMESPACE"):
        return os.environ["AIRUN_OPERATOR_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or LOCAL_NAMESPACE
    except OSError:
        return LOCAL_NAMESPACE


@dataclass(frozen=True)
class SecretKeys:
    """What the operator knows of the Secrets of its namespace: the key names of each, never a value."""

    namespace: str
    keys: Mapping[str, frozenset[str]]


class Credentials:
    """Endpoint credentials read with the operator's own identity from its namespace, cached briefly.
    Values are kept in memory only and never appear in errors or logs (only the Secret's name and key).

    `keys` is what the operator's watch of that namespace (controller/operator/credentials.py) last saw: the
    key names of each Secret, for the Ready condition of the Capabilities that name one. None until the
    watch has listed them (or when the operator may not list Secrets): then nothing is claimed about them."""

    def __init__(self, namespace: str | None = None, ttl: float = CREDENTIAL_TTL) -> None:
        self.namespace = namespace or operator_namespace()
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[bytes, float]] = {}
        self.keys: dict[str, frozenset[str]] | None = None

    def known(self) -> SecretKeys | None:
        return None if self.keys is None else SecretKeys(self.namespace, dict(self.keys))

    def forget(self, name: str) -> None:
        """Secret NAME changed or went: its cached values are not reused (a rotation takes effect at once)."""
        for ref in [r for r in self._cache if r[0] == name]:
            del self._cache[ref]

    async def value(self, auth: HttpAuth, inv: Invocation) -> bytes:
        ref = (auth.secret_ref.name, auth.secret_ref.key)
        cached = self._cache.get(ref)
        if cached is not None and time.monotonic() - cached[1] < self.ttl:
            return cached[0]
        if not isinstance(inv.kube, KubeGateway):
            raise CapabilityError("endpoint credentials need the operator's API connection", retryable=False)
        where = f"secret {self.namespace}/{ref[0]} (spec.http.auth.secretRef)"
        response = await inv.kube.read_as_operator(f"/api/v1/namespaces/{self.namespace}/secrets/{ref[0]}")
        if response.status_code != 200:
            raise CapabilityError(f"{where}: HTTP {response.status_code}", retryable=response.status_code >= 500)
        data = response.json().get("data") or {}
        if ref[1] not in data:
            raise CapabilityError(f"{where} has no key {ref[1]!r}", retryable=False)
        value = base64.b64decode(data[ref[1]]).strip()
        if not value:
            raise CapabilityError(f"{where}: key {ref[1]!r} is empty", retryable=False)
        self._cache[ref] = (value, time.monotonic())
        return value


CREDENTIALS = Credentials()


def parse(name: str, spec: Mapping[str, Any]) -> CapabilitySpec:
    try:
        parsed = CapabilitySpec.model_validate({**dict(spec), "id": name})
    except ValidationError as error:
        raise InvalidCapability(f"capability {name}: {error}") from error
    problems = risk_problems(parsed)
    if problems:
        raise InvalidCapability(f"capability {name}: " + "; ".join(problems))
    return parsed


# Status conditions of a Capability (status.conditions, type Ready), written by the operator.
READY = "Ready"
COMPENSATION_UNKNOWN = "CompensationUnknown"
SECRET_MISSING = "SecretMissing"


def unknown_references(spec: CapabilitySpec, known: Mapping[str, object]) -> list[str]:
    """The capabilities SPEC names that are not (yet) among KNOWN: its compensation. Not a reason to refuse
    the Capability (GitOps tools apply in their own order); the Capability is not ready until they exist,
    and workflows that use it are refused until then."""
    if spec.compensation and spec.compensation.capability and spec.compensation.capability not in known:
        return [spec.compensation.capability]
    return []


def authenticates_with(spec: CapabilitySpec) -> str | None:
    """The name of the Secret of the operator's namespace that SPEC's endpoint authenticates with, if any."""
    auth = spec.http.auth if spec.http else None
    return auth.secret_ref.name if auth else None


def missing_credentials(spec: CapabilitySpec, secrets: SecretKeys | None) -> str | None:
    """Why the Secret that SPEC authenticates with (spec.http.auth.secretRef) is not there (yet), or None.
    SECRETS holds the Secrets of the operator's namespace only: whether a Secret of the same name exists
    anywhere else is never looked at, so a Capability's author cannot probe other namespaces with it. The
    answer names the Secret, its namespace and the key the spec names, never a value nor any other key."""
    auth = spec.http.auth if spec.http else None
    if auth is None or secrets is None:
        return None
    name, key = auth.secret_ref.name, auth.secret_ref.key
    if name not in secrets.keys:
        return f"Secret {name!r} is not in the operator's namespace {secrets.namespace!r} (yet)"
    if key not in secrets.keys[name]:
        return f"Secret {name!r} of the operator's namespace {secrets.namespace!r} has no key {key!r} (yet)"
    return None


def readiness(
    spec: CapabilitySpec, known: Mapping[str, object], secrets: SecretKeys | None = None
) -> tuple[bool, str, str]:
    """(ready, reason, message) of the Ready condition of SPEC among the KNOWN capabilities and SECRETS."""
    missing = unknown_references(spec, known)
    if missing:
        return (
            False,
            COMPENSATION_UNKNOWN,
            f"compensation {missing[0]!r} is not a capability (yet): workflows that use {spec.id} are refused "
            "until it exists",
        )
    absent = missing_credentials(spec, secrets)
    undo = spec.compensation.capability if spec.compensation else None
    compensation = known.get(undo) if undo else None
    if not absent and isinstance(compensation, CapabilitySpec):  # what undoes it must be able to run too
        why = missing_credentials(compensation, secrets)
        absent = f"its compensation {undo!r} is not ready: {why}" if why else None
    if absent:
        return False, SECRET_MISSING, f"{absent}: workflows that use {spec.id} are refused until it is there"
    return True, READY, "every capability and Secret it names exists"


def credential_refusals(
    spec: WorkflowSpec, capabilities: Mapping[str, CapabilitySpec], secrets: SecretKeys | None
) -> list[str]:
    """The steps of SPEC that would run a capability (forward or compensating) whose Secret is not there
    (yet): refused at admission, as a Capability that is not ready (its Ready condition: SecretMissing)."""
    errors = []
    for step in spec.steps:
        cap = capabilities.get(step.capability or "")
        if cap is None:
            continue  # an unknown capability: spec_errors says so
        undo = step.compensation or cap.compensation  # a step's compensation overrides the capability's
        names = [cap.id, *([undo.capability] if undo and undo.capability else [])]
        for name in dict.fromkeys(names):
            used = capabilities.get(name)
            absent = missing_credentials(used, secrets) if used is not None else None
            if absent:
                errors.append(f"step {step.name!r}: capability {name} is not ready: {absent}")
    return errors


def problems_with(spec: CapabilitySpec, builtin: Mapping[str, object]) -> list[str]:
    """What keeps SPEC from joining the registry at all (built-in names, a missing endpoint, ...). A
    reference to a capability not applied yet is no problem here: see readiness()."""
    problems = []
    if spec.id in builtin:
        problems.append(f"{spec.id} is a built-in capability; choose another name")
    if spec.http is None:
        problems.append("spec.http is required")
    elif spec.http.auth is not None:
        parts = urlsplit(spec.http.url)
        if (
            parts.scheme != "https"
            and parts.hostname not in ("localhost", "::1")
            and not (parts.hostname or "").startswith("127.")
        ):
            problems.append("spec.http.auth needs an https:// URL (plain http only on loopback)")
    return problems


def _authenticator(kind: HttpAuthType, value: bytes) -> Callable[[bytes], dict[str, str]]:
    """The headers that authenticate the operator for a request with a given body."""
    if kind is HttpAuthType.BEARER:
        return lambda body: {"Authorization": f"Bearer {value.decode()}"}
    return lambda body: signed_headers(value, body)


def http_handler(spec: CapabilitySpec, credentials: Credentials | None = None) -> Handler:
    endpoint = spec.http
    assert endpoint is not None

    async def handler(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        sign_with: Callable[[bytes], dict[str, str]] | None = None
        scrub = secrets.Scrubber(())
        if endpoint.auth is not None:
            value = await (credentials or CREDENTIALS).value(endpoint.auth, inv)
            scrub = secrets.Scrubber([value.decode(errors="replace")])
            sign_with = _authenticator(endpoint.auth.type, value)
        try:
            with secrets.scrubbing_logs(scrub):
                response = await call_endpoint(
                    endpoint.method,
                    endpoint.url,
                    inputs,
                    inv,
                    timeout_seconds=endpoint.timeout_seconds,
                    sign_with=sign_with,
                )
        except CapabilityError as error:  # an endpoint that echoes its token in an error body
            raise CapabilityError(scrub.text(str(error)), retryable=error.retryable) from None
        json_body = response.get("json")
        outputs = json_body if isinstance(json_body, dict) else {"status": response["status"], "result": json_body}
        scrubbed: dict[str, Any] = scrub(outputs)
        return scrubbed

    return handler
