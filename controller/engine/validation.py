"""What makes a workflow impossible to run, found before any step starts (pure): the admission webhook
refuses such a spec at `kubectl apply`, `airun plan` shows it, and the engine fails a workflow that
slipped past both (reason InvalidSpec). Step-shape rules are the CRD's (CEL); these span the spec."""

from __future__ import annotations

from collections.abc import Mapping

from controller.api.capability import CapabilitySpec
from controller.api.workflow import WorkflowSpec
from controller.engine import dag
from controller.engine.state import WorkflowRef, approval_name
from controller.engine.steps import kind_of
from controller.engine.templating import StepReads, step_reads


def spec_errors(spec: WorkflowSpec, capabilities: Mapping[str, CapabilitySpec]) -> list[str]:
    """Everything wrong with SPEC, each as one sentence naming the steps."""
    errors = dag.validate(spec.steps)
    if not errors:
        errors += undeclared_reads(spec)
    errors += _approval_name_clashes(spec)
    for step in spec.steps:
        errors += kind_of(step).problems(step, capabilities)
    return errors


def undeclared_reads(spec: WorkflowSpec) -> list[str]:
    """Templates that read `steps.X` of a step X the step does not depend on (directly or transitively):
    a race, since X may not have run yet (it fails with an undefined X, or works by luck), so refused
    before anything runs, naming the dependsOn that would make it certain. A step's compensation may
    read the step itself (it renders once the step succeeded). Assumes dag.validate() found nothing."""
    names = {s.name for s in spec.steps}
    before = dag.ancestors(spec.steps)
    errors = []
    for step in spec.steps:
        reads = step_reads(step.inputs)
        undo = step_reads(step.compensation.inputs) if step.compensation else StepReads()
        unknown = sorted((reads.named | undo.named) - names)
        if unknown:
            listed = ", ".join(f"steps.{n}" for n in unknown)
            errors.append(f"step {step.name!r} reads {listed}, which is not a step of this workflow")
        if step.name in reads.named:
            errors.append(
                f"step {step.name!r} reads its own steps.{step.name} in its inputs: its outputs exist only after it ran"
            )
        missing = sorted(((reads.named | undo.named) & names) - before[step.name] - {step.name})
        if missing:
            listed = ", ".join(f"steps.{n}" for n in missing)
            needed = ", ".join([*step.depends_on, *missing])
            errors.append(
                f"step {step.name!r} reads {listed} but does not depend on {', '.join(missing)}, which may not "
                f"have run yet: add dependsOn: [{needed}]"
            )
        if reads.dynamic or undo.dynamic:
            errors.append(
                f"step {step.name!r} reads steps by an expression (steps[...], or a loop over steps): name each "
                "step it reads (steps.NAME or steps['NAME']) and depend on it"
            )
    return errors


def _approval_name_clashes(spec: WorkflowSpec) -> list[str]:
    """Two steps of one workflow can share an Approval name only when one is named like the other's
    sanitised form (`Prod_DB` and `prod-db-<its digest>`): refused, so one decision never counts twice."""
    ref = WorkflowRef("w", "", "")
    seen: dict[str, str] = {}
    errors = []
    for step in spec.steps:
        name = approval_name(ref, step.name)
        if name in seen:
            errors.append(f"steps {seen[name]!r} and {step.name!r} would share one Approval: rename one")
        seen.setdefault(name, step.name)
    return errors
