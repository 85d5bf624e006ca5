"""Cost of one policy decision (`evaluate`) among 100 rules, a third of them with CEL `when:` conditions,
as the operator makes it right before a step runs: a new query per decision (its variables built anew),
the rules' compiled conditions and match memos warm. Prints p50 and p99; asserts nothing.

    .venv/bin/python -m bench.policy_decision_cost
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from controller.api.capability import RiskLevel
from controller.api.policy import PolicyObject, PolicySpec, Principal
from controller.policy.evaluate import PolicyQuery, evaluate

CAPABILITIES = ["io.fs.delete", "io.fs.write_file", "io.fs.read_file", "k8s.apply", "net.http.request", "sys.sleep"]
CONDITIONS = [
    'step.inputs.path.startsWith("prod/")',
    'step.inputs.manifest.kind in ["ClusterRoleBinding", "RoleBinding"]',
    'has(step.inputs.url) && step.inputs.url.startsWith("https://payments.")',
    'principal.groups.exists(g, g == "contractors") && namespace == "prod"',
    'workflow.labels.env == "prod" && now.getHours() < 6',
    'step.inputs.path.matches("^(etc|var)/.*")',
]
PRINCIPALS = [
    Principal(user=f"system:serviceaccount:agents:agent-{i}", groups=["system:serviceaccounts", "agents"])
    for i in range(20)
]


def rules(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    made: list[dict[str, Any]] = []
    for i in range(count):
        capability = CAPABILITIES[i % len(CAPABILITIES)]
        rule: dict[str, Any] = {
            "principal": rng.choice(["*", "system:serviceaccount:agents:*", "group:agents", "bob"]),
            "capabilities": [capability if i % 4 else capability.rsplit(".", 1)[0] + ".*"],
            "action": rng.choice(["DENY", "REQUIRE_APPROVAL", "DENY"]),
        }
        if i % 3 == 0:
            rule["when"] = CONDITIONS[i % len(CONDITIONS)]
        made.append(rule)
    return made


def policies(total_rules: int = 100, per_policy: int = 20) -> list[PolicyObject]:
    made = []
    for p in range(total_rules // per_policy):
        spec = {"default": "ALLOW", "rules": rules(per_policy, p)}
        made.append(
            PolicyObject(name=f"p{p}", namespace=None if p == 0 else "agents", spec=PolicySpec.model_validate(spec))
        )
    return made


INPUTS: dict[str, Any] = {
    "io.fs.delete": {"path": "scratch/tmp.txt"},
    "io.fs.write_file": {"path": "reports/today.md", "content": "# report\n" * 20},
    "io.fs.read_file": {"path": "prod/config.json"},
    "k8s.apply": {"manifest": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}},
    "net.http.request": {"method": "POST", "url": "https://api.example.com/v1/items", "json": {"a": 1}},
    "sys.sleep": {"seconds": 0},
}


def queries(count: int, seed: int = 7) -> list[PolicyQuery]:
    rng = random.Random(seed)
    made = []
    for i in range(count):
        capability = CAPABILITIES[i % len(CAPABILITIES)]
        made.append(
            PolicyQuery(
                rng.choice(PRINCIPALS),
                "agents",
                capability,
                RiskLevel.MEDIUM,
                workflow=f"wf-{i}",
                step="s",
                inputs=dict(INPUTS[capability]),
                labels={"env": "dev"},
                params={},
                now=None,
            )
        )
    return made


def measure(decisions: int = 20000) -> tuple[float, float, int]:
    chosen = policies()
    asked = queries(decisions)
    for query in asked[:500]:
        evaluate(chosen, query)  # warm: compiled conditions, match memos
    times = []
    for query in asked:
        started = time.perf_counter_ns()
        evaluate(chosen, query)
        times.append(time.perf_counter_ns() - started)
    times.sort()
    return statistics.median(times) / 1000, times[int(len(times) * 0.99)] / 1000, sum(len(p.spec.rules) for p in chosen)


def main() -> None:
    p50, p99, count = measure()
    conditional = sum(1 for p in policies() for r in p.spec.rules if r.when)
    print(
        f"policy decision, {count} rules ({conditional} with CEL conditions) in {count // 20} policies: "
        f"p50 {p50:.1f} µs, p99 {p99:.1f} µs per decision"
    )


if __name__ == "__main__":
    main()
