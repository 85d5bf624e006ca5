"""The step graph: validation with readable errors, and readiness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.api.workflow import Step


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as a path (a -> b -> a), or None. EDGES maps a step to the steps it depends on."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for dep in edges.get(node, ()):
            if color.get(dep) == grey:
                return [*stack[stack.index(dep) :], dep]
            if color.get(dep) == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in edges:
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def validate(steps: Sequence[Step]) -> list[str]:
    """Everything wrong with the graph, each as one sentence naming the steps."""
    errors: list[str] = []
    names = [s.name for s in steps]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            errors.append(f"step name {name!r} is used more than once")
        seen.add(name)
    for step in steps:
        for dep in step.depends_on:
            if dep not in seen:
                errors.append(f"step {step.name!r} depends on {dep!r}, which is not a step of this workflow")
            elif dep == step.name:
                errors.append(f"step {step.name!r} depends on itself")
    if not errors:
        cycle = find_cycle({s.name: s.depends_on for s in steps})
        if cycle:
            # dependsOn points backwards in time; print the cycle in the order the steps would run.
            errors.append("dependency cycle: " + " -> ".join(reversed(cycle)))
    return errors


def topological_order(steps: Sequence[Step]) -> list[str]:
    """Step names, every step after the steps it depends on; ties keep spec order. Assumes no cycle."""
    placed: set[str] = set()
    order: list[str] = []
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if all(d in placed for d in s.depends_on)]
        if not ready:  # a cycle: validate() reports it; keep the rest in spec order
            ready = remaining
        for s in ready:
            placed.add(s.name)
            order.append(s.name)
        remaining = [s for s in remaining if s.name not in placed]
    return order


def ancestors(steps: Sequence[Step]) -> dict[str, frozenset[str]]:
    """Each step's direct and transitive dependencies: the steps certain to have succeeded before it
    starts. Assumes validate() found nothing."""
    by_name = {s.name: s for s in steps}
    found: dict[str, frozenset[str]] = {}
    for name in topological_order(steps):
        deps = by_name[name].depends_on
        found[name] = frozenset(deps).union(*(found[d] for d in deps))
    return found
