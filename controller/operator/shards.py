"""This replica's Leases (DESIGN section 7): which shards of the workflows it runs. The decisions are pure
(controller.engine.shards); this module reads and writes the Leases and tells the runtime what changed.

Each replica keeps a Lease of its own (`airun-replica-<identity>`, renewed while it lives) and holds some
shard Leases (`airun-shard-<n>`). It renews what it holds every third of a lease duration; if it could not
renew within two thirds of one (the API server unreachable, the process starved), it stops running those
shards by itself, before any other replica may take them (a whole duration without a visible change).
Every write of a Lease carries its resourceVersion, so two replicas can never both win one.

The Lease alone does not fence a replica that was paused past its deadline and wakes up mid-write: that is
the workflow's own resourceVersion, which each status write carries (controller/operator/runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from controller.engine import shards as pure

LABEL = "aifirst.dev/lease"  # shard | replica
SHARD = "shard"
COUNT_ANNOTATION = "aifirst.dev/shards"  # the writer's --shards: every replica must use the same
REPLICA = "replica"
SHARD_LEASE = "airun-shard-{}"
REPLICA_LEASE = "airun-replica-{}"
IDENTITY = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?$")
log = logging.getLogger("airun.shards")


class Ownership(Protocol):
    """What the runtime asks: may this replica run the object with this uid now?"""

    count: int

    def owns(self, uid: str) -> bool:
        """It holds the shard of UID, and is not giving it back."""
        ...

    def releasing(self, uid: str) -> bool:
        """It holds the shard of UID but is giving it back: start nothing new, finish what runs."""
        ...


class Standalone:
    """One replica, no Leases (`airun operator` without --shards, the local environment): it owns all."""

    count = 1

    def owns(self, uid: str) -> bool:
        return True

    def releasing(self, uid: str) -> bool:
        return False


@dataclass
class ShardHooks:
    """What the runtime does when this replica gains a shard, loses one, or is about to give one back."""

    acquired: Callable[[int], Awaitable[None]]  # start running its workflows
    lost: Callable[[int], Awaitable[None]]  # stop them now (cancel whatever still runs)
    release: Callable[[int], Awaitable[None]]  # let them finish their attempts and park (bounded)


@dataclass
class Held:
    version: str  # the Lease's resourceVersion after this replica's last write
    renewed: float  # monotonic time at which that write started
    releasing: bool = False


@dataclass
class Seen:
    version: str
    since: float  # monotonic time this replica first saw that version


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_identity(identity: str) -> str:
    if not IDENTITY.match(identity):
        raise ValueError(
            f"--identity {identity!r}: lower-case letters, digits, '-' and '.', at most 202 characters "
            "(it names a Lease)"
        )
    return identity


@dataclass
class ShardLeases:
    """The Lease loop of one replica (run() until stop())."""

    api: client.ApiClient
    namespace: str
    identity: str
    count: int
    duration: float  # seconds: the Leases' leaseDurationSeconds
    hooks: ShardHooks
    held: dict[int, Held] = field(default_factory=dict)
    seen: dict[str, Seen] = field(default_factory=dict)
    stopping: bool = False
    writes: int = 0  # Lease writes so far (the benchmark reports them per step)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one Lease write at a time
    _releases: set[asyncio.Task[None]] = field(default_factory=set)
    _warned: list[str] = field(default_factory=list)

    @property
    def renew_every(self) -> float:
        return self.duration / 3

    @property
    def renew_deadline(self) -> float:
        return self.duration * 2 / 3

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api)

    # -- what the runtime asks -----------------------------------------------------------------------

    def _held(self, uid: str) -> Held | None:
        held = self.held.get(pure.shard_of(uid, self.count))
        if held is None or time.monotonic() - held.renewed >= self.renew_deadline:
            return None
        return held

    def owns(self, uid: str) -> bool:
        held = self._held(uid)
        return held is not None and not held.releasing

    def releasing(self, uid: str) -> bool:
        held = self._held(uid)
        return held is None or held.releasing

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        interval = max(0.2, self.duration / 10)
        while True:
            try:
                await self.tick()
            except (ApiException, OSError, TimeoutError, aiohttp.ClientError) as error:
                log.warning("Leases: %s: %s", type(error).__name__, getattr(error, "reason", None) or error)
            await self._drop_overdue()
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        listed = await self.coordination.list_namespaced_lease(self.namespace, label_selector=LABEL)
        leases = {item.metadata.name: item for item in listed.items}
        now = time.monotonic()
        for name, lease in leases.items():
            seen = self.seen.get(name)
            if seen is None or seen.version != lease.metadata.resource_version:
                self.seen[name] = Seen(lease.metadata.resource_version, now)
        for name in [n for n in self.seen if n not in leases]:
            del self.seen[name]
        await self._renew_membership(leases.get(REPLICA_LEASE.format(self.identity)))
        await self._renew_shards(leases)
        members = {
            (lease.spec.holder_identity or ""): self._view(name, lease)
            for name, lease in leases.items()
            if (lease.metadata.labels or {}).get(LABEL) == REPLICA
        }
        replicas = pure.live_replicas(self.identity, members, self.duration)
        if self._other_counts(leases, replicas):
            return  # keep what it holds (renewed above), take nothing: the shards mean different things
        views = {s: self._view(SHARD_LEASE.format(s), leases.get(SHARD_LEASE.format(s))) for s in range(self.count)}
        decisions = pure.decide(self.identity, self.count, views, replicas, self.duration, frozenset(self.held))
        for shard in decisions.release:
            self._start_release(shard)
        for shard in decisions.acquire:
            await self._acquire(shard, leases.get(SHARD_LEASE.format(shard)))

    def _other_counts(self, leases: dict[str, Any], replicas: list[str]) -> bool:
        """Whether a live replica splits the workflows into another number of shards (a rollout that changed
        --shards without scaling to 0 first): a workflow would be in one shard for it and another for this
        one, and both would run it. Until it is gone this replica takes no shard."""
        counts = {
            lease.spec.holder_identity: (lease.metadata.annotations or {}).get(COUNT_ANNOTATION)
            for lease in leases.values()
            if (lease.metadata.labels or {}).get(LABEL) == REPLICA
        }
        others = sorted(r for r in replicas if r != self.identity and counts.get(r) not in (None, str(self.count)))
        if others and others != self._warned:
            log.error(
                "replicas %s split the workflows into other numbers of shards than this one (%d): this replica "
                "takes no shard until they are gone (scale to 0 to change --shards)",
                ", ".join(f"{r} ({counts[r]})" for r in others),
                self.count,
            )
        self._warned = others
        return bool(others)

    def _view(self, name: str, lease: Any) -> pure.LeaseView:
        if lease is None:
            seen = self.seen.setdefault(name, Seen("", time.monotonic()))  # absent since this moment
            return pure.LeaseView(holder=None, unchanged_for=time.monotonic() - seen.since)
        seen = self.seen[name]
        return pure.LeaseView(holder=lease.spec.holder_identity or None, unchanged_for=time.monotonic() - seen.since)

    def _body(self, name: str, kind: str, holder: str | None, version: str | None, transitions: int) -> dict[str, Any]:
        moment = _micro_time(datetime.now(UTC))
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "renewTime": moment,
            "leaseTransitions": transitions,
        }
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {LABEL: kind},
            "annotations": {COUNT_ANNOTATION: str(self.count)},
        }
        if version:
            metadata["resourceVersion"] = version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def _write(self, name: str, body: dict[str, Any], create: bool) -> Any:
        async with self._lock:
            self.writes += 1
            lease: Any = body  # the client sends a dict as it is
            if create:
                return await self.coordination.create_namespaced_lease(self.namespace, lease)
            return await self.coordination.replace_namespaced_lease(name, self.namespace, lease)

    async def _renew_membership(self, lease: Any) -> None:
        name = REPLICA_LEASE.format(self.identity)
        seen = self.seen.get(name)
        if lease is not None and seen is not None and time.monotonic() - seen.since < self.renew_every:
            return
        version = lease.metadata.resource_version if lease is not None else None
        body = self._body(name, REPLICA, self.identity, version, 0)
        try:
            written = await self._write(name, body, create=lease is None)
        except ApiException as error:
            if error.status not in (404, 409):
                raise
            return  # changed under us (or gone): the next tick reads it again
        self.seen[name] = Seen(written.metadata.resource_version, time.monotonic())

    async def _renew_shards(self, leases: dict[str, Any]) -> None:
        for shard, held in list(self.held.items()):
            name = SHARD_LEASE.format(shard)
            lease = leases.get(name)
            if lease is None or lease.spec.holder_identity != self.identity:
                await self._lose(shard, "its Lease was taken over or removed")
                continue
            if time.monotonic() - held.renewed < self.renew_every:
                continue
            started = time.monotonic()
            body = self._body(name, SHARD, self.identity, held.version, lease.spec.lease_transitions or 0)
            body["spec"]["acquireTime"] = lease.spec.acquire_time and _micro_time(lease.spec.acquire_time)
            try:
                written = await self._write(name, body, create=False)
            except ApiException as error:
                if error.status not in (404, 409):
                    raise
                await self._lose(shard, "its Lease changed under this replica")
                continue
            if shard in self.held:  # not lost meanwhile
                self.held[shard].version = written.metadata.resource_version
                self.held[shard].renewed = started

    async def _acquire(self, shard: int, lease: Any) -> None:
        name = SHARD_LEASE.format(shard)
        started = time.monotonic()
        transitions = (lease.spec.lease_transitions or 0) + 1 if lease is not None else 0
        version = lease.metadata.resource_version if lease is not None else None
        body = self._body(name, SHARD, self.identity, version, transitions)
        body["spec"]["acquireTime"] = body["spec"]["renewTime"]
        try:
            written = await self._write(name, body, create=lease is None)
        except ApiException as error:
            if error.status in (404, 409):
                return  # another replica was quicker
            raise
        self.held[shard] = Held(written.metadata.resource_version, started)
        self.seen[name] = Seen(written.metadata.resource_version, started)
        previous = lease.spec.holder_identity if lease is not None else None
        log.info("shard %d of %d: acquired%s", shard, self.count, f" from {previous}" if previous else "")
        await self.hooks.acquired(shard)

    async def _lose(self, shard: int, why: str) -> None:
        if self.held.pop(shard, None) is None:
            return
        log.warning("shard %d of %d: lost (%s); its workflows stop here", shard, self.count, why)
        await self.hooks.lost(shard)

    async def _drop_overdue(self) -> None:
        """A shard not renewed within the renew deadline is given up without a write: by the time any
        other replica may take it (a lease duration after it last saw a renewal), nothing runs here."""
        for shard, held in list(self.held.items()):
            if time.monotonic() - held.renewed >= self.renew_deadline:
                await self._lose(shard, f"not renewed for {self.renew_deadline:.0f} s")

    def _start_release(self, shard: int) -> None:
        held = self.held.get(shard)
        if held is None or held.releasing:
            return
        held.releasing = True
        task = asyncio.create_task(self._release(shard), name=f"release shard {shard}")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, shard: int) -> None:
        """Gives SHARD back to the replica it hashes to: its workflows finish their attempts and park
        first, so that the next holder recovers nothing in doubt."""
        log.info("shard %d of %d: giving it back (another replica is there for it)", shard, self.count)
        await self.hooks.release(shard)
        await self.hooks.lost(shard)  # whatever did not park in time stops now, before the Lease is free
        held = self.held.pop(shard, None)
        if held is None:
            return
        await self._free(shard, held)

    async def _free(self, shard: int, held: Held) -> None:
        name = SHARD_LEASE.format(shard)
        body = self._body(name, SHARD, None, held.version, 0)
        with contextlib.suppress(ApiException, OSError, TimeoutError, aiohttp.ClientError):
            lease = await self.coordination.read_namespaced_lease(name, self.namespace)
            body["spec"]["leaseTransitions"] = lease.spec.lease_transitions or 0
            await self._write(name, body, create=False)

    async def stop(self) -> None:
        """Graceful stop, once the runtime drained: every shard Lease is freed (the others take them at
        once instead of after a lease duration) and this replica's own Lease is deleted."""
        self.stopping = True
        for task in list(self._releases):
            task.cancel()
        for shard, held in list(self.held.items()):
            self.held.pop(shard, None)
            await self._free(shard, held)
        with contextlib.suppress(ApiException, OSError, TimeoutError, aiohttp.ClientError):
            await self.coordination.delete_namespaced_lease(REPLICA_LEASE.format(self.identity), self.namespace)
