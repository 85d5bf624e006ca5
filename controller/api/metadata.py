"""The annotations, labels and finalizer that airun writes on objects: one name each. Only the operator
(and its admission webhooks) writes them; the webhooks refuse changes to them by anyone else."""

from __future__ import annotations

PREFIX = "aifirst.dev/"  # every annotation and label of ours starts with it

# Workflow: the saga finalizer, added at creation, so that deleting a running workflow compensates it first.
FINALIZER = "aifirst.dev/saga"

# Workflow: the creator as the admission webhook recorded it (groups as a JSON list), and its signature.
PRINCIPAL_ANNOTATION = "aifirst.dev/principal"
GROUPS_ANNOTATION = "aifirst.dev/principal-groups"
ATTESTATION_ANNOTATION = "aifirst.dev/principal-attestation"
IDENTITY_ANNOTATIONS = (PRINCIPAL_ANNOTATION, GROUPS_ANNOTATION, ATTESTATION_ANNOTATION)

# Workflow: finished, nothing left to do; set by the operator in the write that removes its finalizer. The
# operator watches only workflows without it (a server-side selector), so finished workflows cost a restart
# nothing. Setting spec.rollback removes it (the mutating UPDATE webhook): the workflow is watched again.
FINISHED_LABEL = "aifirst.dev/finished"
UNFINISHED_SELECTOR = f"!{FINISHED_LABEL}"

# Workflow: who set spec.rollback (the UPDATE webhook).
ROLLBACK_BY_ANNOTATION = "aifirst.dev/rollback-requested-by"

# Approval: who decided it (the UPDATE webhook); where to announce it; the workflow it belongs to.
DECIDED_BY_ANNOTATION = "aifirst.dev/decided-by"
NOTIFY_ANNOTATION = "aifirst.dev/notify-url"
WORKFLOW_LABEL = "aifirst.dev/workflow"

# Workflow: the Transaction a call joined (set at creation, never changed), and when it joined (microseconds,
# the admission webhook's stamp: the call order).
TRANSACTION_LABEL = "aifirst.dev/transaction"
JOINED_ANNOTATION = "aifirst.dev/transaction-joined-at"
