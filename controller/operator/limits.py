"""Where rate-limit counts and circuit breakers live: ConfigMaps in the operator's namespace, written with
resourceVersion preconditions (compare-and-swap), so that counts are exact however many steps start at
once, in one operator or in two, and survive a restart of the operator.

Why the API and not the audit store or memory: the operator's durable state is already the API's (workflow
status); a count read and written in one object per (policy, limit, principal) is exact with the API
server's optimistic concurrency alone, needs no second store to be up for a step to start, and is visible
(`kubectl get cm -n airun-system -l aifirst.dev/state`). The audit store keeps the story, not the counts.

  airun-limit-<digest>   one per (policy, limit, principal): data.entries = JSON [[epoch seconds, key digest], ...]
  airun-breakers         one for all: data[<principal digest>] = JSON {principal, denials: [[t, namespace]],
                         open: {policy: since}}; a reset (`airun policy reset`) removes a principal's key, through
                         the admission webhook breaker-reset, which records who did it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from controller.api.policy import PolicyObject
from controller.policy import limits as pure

STATE_LABEL, BREAKERS, principal_key = pure.STATE_LABEL, pure.BREAKERS, pure.principal_key
ATTEMPTS = 20
MAX_DENIALS = 10_000  # per principal, newest kept


class Conflict(Exception):
    pass


class Store:
    """Compare-and-swap on ConfigMaps of one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    async def read(self, name: str) -> tuple[dict[str, str], str | None]:
        """The data and resourceVersion of NAME ({} and None when it does not exist)."""
        try:
            found: Any = await self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return {}, None
            raise
        return dict(found.data or {}), found.metadata.resource_version

    async def swap(self, name: str, kind: str, data: Mapping[str, str], version: str | None) -> None:
        """Writes DATA if NAME is still at VERSION (None: does not exist yet); Conflict otherwise."""
        metadata: dict[str, Any] = {"name": name, "labels": {STATE_LABEL: kind}}
        body: Any = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(data)}
        try:
            if version is None:
                await self.core.create_namespaced_config_map(self.namespace, body)
            else:
                metadata["resourceVersion"] = version
                await self.core.replace_namespaced_config_map(name, self.namespace, body)
        except ApiException as error:
            if error.status in (409, 404):  # changed (or created, or deleted) meanwhile: read again
                raise Conflict(name) from error
            raise

    async def update(
        self, name: str, kind: str, change: Callable[[dict[str, str]], dict[str, str] | None]
    ) -> dict[str, str]:
        """Applies CHANGE (None: nothing to write) to NAME's data until no one else wrote in between."""
        for _ in range(ATTEMPTS):
            data, version = await self.read(name)
            changed = change(dict(data))
            if changed is None:
                return data
            try:
                await self.swap(name, kind, changed, version)
            except Conflict:
                continue
            return changed
        raise RuntimeError(f"ConfigMap {self.namespace}/{name} changed {ATTEMPTS} times while being written")


def _entries(data: Mapping[str, str]) -> list[pure.Entry]:
    return [(float(at), str(d)) for at, d in json.loads(data.get("entries") or "[]")]


class Limiter:
    """Counts steps against the limits of policies (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def reserve(self, applied: Sequence[pure.AppliedLimit], key: str) -> tuple[pure.AppliedLimit, float] | None:
        """Counts the step KEY against every limit of APPLIED; None when all allow it, else the limit that
        refuses it and the seconds until its window frees (the counts already taken are given back)."""
        taken: list[pure.AppliedLimit] = []
        for limit in applied:
            retry: list[float] = []

            def change(data: dict[str, str], limit: pure.AppliedLimit = limit, retry: list[float] = retry) -> Any:
                verdict = pure.admit(_entries(data), limit.limit, time.time(), key)
                if not verdict.allowed:
                    retry.append(verdict.retry_after or 0.0)
                    return None
                if verdict.entries is None:
                    return None
                return {**data, "entries": json.dumps(verdict.entries), "limit": limit.describe()}

            await self.store.update(limit.name, "rate-limit", change)
            if retry:
                for earlier in taken:
                    await self.give_back(earlier, key)
                return limit, retry[0]
            taken.append(limit)
        return None

    async def give_back(self, limit: pure.AppliedLimit, key: str) -> None:
        def change(data: dict[str, str]) -> dict[str, str] | None:
            kept = pure.release(_entries(data), key)
            return None if kept is None else {**data, "entries": json.dumps(kept)}

        await self.store.update(limit.name, "rate-limit", change)


class Breakers:
    """Denials per principal, and the breakers they opened (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def deny(self, principal: str, namespace: str, policies: Sequence[PolicyObject]) -> list[str]:
        """Records one denied step of PRINCIPAL in NAMESPACE; returns the policies whose breaker it opened."""
        opened: list[str] = []
        now = time.time()

        def change(data: dict[str, str]) -> dict[str, str]:
            opened.clear()
            key = principal_key(principal)
            entry = json.loads(data.get(key) or "{}") or {"principal": principal, "denials": [], "open": {}}
            denials = [*entry.get("denials", []), [now, namespace]][-MAX_DENIALS:]
            entry["denials"] = [d for d in denials if d[0] > now - 7 * 24 * 3600]
            for applied in pure.breakers_for(policies, namespace):
                if applied.policy in entry["open"]:
                    continue
                scope = None if applied.policy.startswith("ClusterPolicy ") else namespace
                times = [t for t, ns in entry["denials"] if scope is None or ns == scope]
                if pure.opens(times, applied.breaker, now):
                    entry["open"][applied.policy] = now
                    opened.append(applied.policy)
            return {**data, key: json.dumps(entry)}

        await self.store.update(BREAKERS, "breakers", change)
        return opened

    async def open_for(self, principal: str) -> dict[str, Any]:
        """PRINCIPAL's entry: {principal, denials, open: {policy: since}} ({} when none)."""
        data, _ = await self.store.read(BREAKERS)
        entry: dict[str, Any] = json.loads(data.get(principal_key(principal)) or "{}")
        return entry
