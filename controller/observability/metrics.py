"""Prometheus metrics of the operator (prefix airun_). Served on --metrics-port by prometheus_client."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.api.workflow import Decision

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


class _Live(Collector):
    """Gauges computed at scrape time from the operator's live state."""

    def __init__(
        self,
        workflow_phases: Callable[[], Iterable[tuple[str, str]]],
        pending_approvals: Callable[[], Iterable[tuple[str, datetime | None]]],
        namespaces: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.workflow_phases = workflow_phases
        self.pending_approvals = pending_approvals
        self.namespaces = namespaces  # where workflows ran (finished ones are no longer in workflow_phases)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        workflows = GaugeMetricFamily(
            "airun_workflows", "Workflows by namespace and phase", labels=["namespace", "phase"]
        )
        phases = Tally(self.workflow_phases())
        for (namespace, phase), count in sorted(phases.items()):
            workflows.add_metric([namespace, phase], count)
        yield workflows
        pending = GaugeMetricFamily("airun_approvals_pending", "Approvals waiting for a decision", labels=["namespace"])
        oldest = GaugeMetricFamily(
            "airun_approval_oldest_pending_seconds",
            "How long the oldest undecided Approval of the namespace has waited",
            labels=["namespace"],
        )
        requests = list(self.pending_approvals())
        counts = Tally(namespace for namespace, _ in requests)
        now = datetime.now(UTC)
        waited: dict[str, float] = {}
        for namespace, requested_at in requests:
            if requested_at is not None:
                waited[namespace] = max(waited.get(namespace, 0.0), (now - requested_at).total_seconds())
        # 0 rather than no series for namespaces with workflows, so that "went back to 0" is visible.
        for namespace in sorted(set(counts) | {namespace for namespace, _ in phases} | set(self.namespaces())):
            pending.add_metric([namespace], counts[namespace])
            oldest.add_metric([namespace], waited.get(namespace, 0.0))
        yield pending
        yield oldest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.workflow_duration = Histogram(
            "airun_workflow_duration_seconds",
            "Start to end of finished workflows",
            ["phase"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "airun_step_duration_seconds",
            "Duration of step attempts",
            ["capability", "result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.step_retries = Counter(
            "airun_step_retries_total", "Step attempts after the first", ["capability"], registry=r
        )
        self.step_failures = Counter(
            "airun_step_failures_total", "Step attempts that failed", ["capability"], registry=r
        )
        self.steps = Counter("airun_steps_total", "Step attempts", ["capability"], registry=r)
        self.compensations = Counter(
            "airun_compensations_total", "Compensations by result", ["capability", "result"], registry=r
        )
        self.decisions = Counter("airun_policy_decisions_total", "Policy decisions on steps", ["decision"], registry=r)
        for decision in Decision:  # every decision has a series from the start (rate() needs two samples)
            self.decisions.labels(decision.value)
        self.approval_wait = Histogram(
            "airun_approval_wait_seconds", "Time from request to decision", ["result"], buckets=WAIT_BUCKETS, registry=r
        )
        self.reconcile_errors = Counter(
            "airun_reconcile_errors_total", "Unexpected errors while driving workflows", registry=r
        )
        self.status_writes = Counter("airun_status_writes_total", "PATCHes of workflow status", registry=r)
        self.breaker_opens = Counter(
            "airun_breaker_opens_total",
            "Circuit breakers of policies opened for a principal (its new workflows refused until reset)",
            ["policy"],
            registry=r,
        )
        self.webhooks_registered = Gauge(
            "airun_webhooks_registered",
            "1 while the admission webhook configurations are registered; at 0 no new workflow starts",
            registry=r,
        )
        self.webhooks_registered.set(1)

    def watch(
        self,
        workflow_phases: Callable[[], Iterable[tuple[str, str]]],
        pending_approvals: Callable[[], Iterable[tuple[str, datetime | None]]],
        namespaces: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.registry.register(_Live(workflow_phases, pending_approvals, namespaces))

    def serve(self, port: int, address: str) -> None:
        start_http_server(port, addr=address, registry=self.registry)
