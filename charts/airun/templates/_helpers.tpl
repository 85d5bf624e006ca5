{{/* Names and labels shared by the templates. */}}

{{- define "airun.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "airun.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "airun.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "airun.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "airun.selectorLabels" -}}
app.kubernetes.io/name: {{ include "airun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of everything the chart installs; airun.labels adds the operator's component. */}}
{{- define "airun.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "airun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: airun
{{- end -}}

{{- define "airun.labels" -}}
{{ include "airun.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "airun.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "airun.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "airun.webhookService" -}}
{{- printf "%s-webhook" (include "airun.fullname" .) -}}
{{- end -}}

{{- define "airun.webhookCertSecret" -}}
{{- printf "%s-webhook-cert" (include "airun.fullname" .) -}}
{{- end -}}

{{- define "airun.attestationSecret" -}}
{{- printf "%s-attestation" (include "airun.fullname" .) -}}
{{- end -}}

{{- define "airun.notifySecret" -}}
{{- default (printf "%s-notify" (include "airun.fullname" .)) .Values.notify.existingSecret -}}
{{- end -}}

{{- define "airun.workspacesClaim" -}}
{{- $persistence := .Values.workspaces.persistence -}}
{{- default (default (printf "%s-workspaces" (include "airun.fullname" .)) .Values.workspaces.existingClaim) $persistence.existingClaim -}}
{{- end -}}

{{- define "airun.snapshotKeySecret" -}}
{{- default (printf "%s-snapshot-key" (include "airun.fullname" .)) .Values.snapshots.existingSecret -}}
{{- end -}}

{{- define "airun.auditClaim" -}}
{{- default (printf "%s-audit" (include "airun.fullname" .)) .Values.audit.sqlite.persistence.existingClaim -}}
{{- end -}}

{{/* The webhooks' configuration name: the suffix of every webhook's name, as kopf would build it. */}}
{{- define "airun.webhookConfiguration" -}}
{{- printf "%s.aifirst.dev" (include "airun.fullname" .) -}}
{{- end -}}

{{/*
One webhook as kopf would build it for the operator's handler ID (kopf's build_webhooks: the name is the ID
with "_" as "-" plus the configuration's name, the path is "/" + the ID). A test compares these with kopf's
own output for the operator's registry. Arguments: root, id, plural, operations, caBundle.
*/}}
{{- /*
matchConditions of the UPDATE webhooks: metadata-only updates (foreign finalizers, labels and annotations
that are not aifirst.dev/; the saga finalizer's removal from a finished workflow, the finished label added to it) never reach them. Generated from controller/operator/webhooks.py guarded_update();
tests/integration/test_chart.py compares them.
*/ -}}
{{- define "airun.matchCondition" -}}
{{- if eq . "configmaps" -}}
"(request.operation != 'UPDATE') || (!has(object.data) || !has(oldObject.data) || object.data != oldObject.data) || (!((!has(object.metadata.labels) || object.metadata.labels.all(k, !k.startsWith('aifirst.dev/') || (has(oldObject.metadata.labels) && k in oldObject.metadata.labels && oldObject.metadata.labels[k] == object.metadata.labels[k]))) && (!has(oldObject.metadata.labels) || oldObject.metadata.labels.all(k, !k.startsWith('aifirst.dev/') || (has(object.metadata.labels) && k in object.metadata.labels)))))"
{{- else if eq . "approvals" -}}
"(request.operation != 'UPDATE') || (!has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec) || (!((!has(object.metadata.annotations) || object.metadata.annotations.all(k, !k.startsWith('aifirst.dev/') || (has(oldObject.metadata.annotations) && k in oldObject.metadata.annotations && oldObject.metadata.annotations[k] == object.metadata.annotations[k]))) && (!has(oldObject.metadata.annotations) || oldObject.metadata.annotations.all(k, !k.startsWith('aifirst.dev/') || (has(object.metadata.annotations) && k in object.metadata.annotations))))) || (!((!has(object.metadata.labels) || object.metadata.labels.all(k, !k.startsWith('aifirst.dev/') || (has(oldObject.metadata.labels) && k in oldObject.metadata.labels && oldObject.metadata.labels[k] == object.metadata.labels[k]))) && (!has(oldObject.metadata.labels) || oldObject.metadata.labels.all(k, !k.startsWith('aifirst.dev/') || (has(object.metadata.labels) && k in object.metadata.labels))))) || ((has(oldObject.metadata.finalizers) && 'aifirst.dev/saga' in oldObject.metadata.finalizers && !(has(object.metadata.finalizers) && 'aifirst.dev/saga' in object.metadata.finalizers))) || (has(object.metadata.ownerReferences) != has(oldObject.metadata.ownerReferences) || (has(object.metadata.ownerReferences) && object.metadata.ownerReferences != oldObject.metadata.ownerReferences))"
{{- else if eq . "workflows" -}}
"(request.operation != 'UPDATE') || (!has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec) || (!((!has(object.metadata.annotations) || object.metadata.annotations.all(k, !k.startsWith('aifirst.dev/') || (has(oldObject.metadata.annotations) && k in oldObject.metadata.annotations && oldObject.metadata.annotations[k] == object.metadata.annotations[k]))) && (!has(oldObject.metadata.annotations) || oldObject.metadata.annotations.all(k, !k.startsWith('aifirst.dev/') || (has(object.metadata.annotations) && k in object.metadata.annotations))))) || (!((!has(object.metadata.labels) || object.metadata.labels.all(k, !(k.startsWith('aifirst.dev/') && k != 'aifirst.dev/finished') || (has(oldObject.metadata.labels) && k in oldObject.metadata.labels && oldObject.metadata.labels[k] == object.metadata.labels[k]))) && (!has(oldObject.metadata.labels) || oldObject.metadata.labels.all(k, !(k.startsWith('aifirst.dev/') && k != 'aifirst.dev/finished') || (has(object.metadata.labels) && k in object.metadata.labels))))) || ((has(object.metadata.labels) && 'aifirst.dev/finished' in object.metadata.labels ? object.metadata.labels['aifirst.dev/finished'] : '') != (has(oldObject.metadata.labels) && 'aifirst.dev/finished' in oldObject.metadata.labels ? oldObject.metadata.labels['aifirst.dev/finished'] : '') && !((has(object.metadata.labels) && 'aifirst.dev/finished' in object.metadata.labels ? object.metadata.labels['aifirst.dev/finished'] : '') == 'true' && !(has(object.metadata.finalizers) && 'aifirst.dev/saga' in object.metadata.finalizers) && has(oldObject.status) && has(oldObject.status.phase) && oldObject.status.phase in ['Succeeded', 'Failed', 'Compensated'] && !(has(object.spec.rollback) && object.spec.rollback && oldObject.status.phase == 'Succeeded'))) || ((has(oldObject.metadata.finalizers) && 'aifirst.dev/saga' in oldObject.metadata.finalizers && !(has(object.metadata.finalizers) && 'aifirst.dev/saga' in object.metadata.finalizers) && !(has(oldObject.status) && has(oldObject.status.phase) && oldObject.status.phase in ['Succeeded', 'Failed', 'Compensated', 'CompensationFailed'])))"
{{- else -}}
"(request.operation != 'UPDATE') || (!has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec) || (!((!has(object.metadata.annotations) || object.metadata.annotations.all(k, !k.startsWith('aifirst.dev/') || (has(oldObject.metadata.annotations) && k in oldObject.metadata.annotations && oldObject.metadata.annotations[k] == object.metadata.annotations[k]))) && (!has(oldObject.metadata.annotations) || oldObject.metadata.annotations.all(k, !k.startsWith('aifirst.dev/') || (has(object.metadata.annotations) && k in object.metadata.annotations))))) || (!((!has(object.metadata.labels) || object.metadata.labels.all(k, !k.startsWith('aifirst.dev/') || (has(oldObject.metadata.labels) && k in oldObject.metadata.labels && oldObject.metadata.labels[k] == object.metadata.labels[k]))) && (!has(oldObject.metadata.labels) || oldObject.metadata.labels.all(k, !k.startsWith('aifirst.dev/') || (has(object.metadata.labels) && k in object.metadata.labels))))) || ((has(oldObject.metadata.finalizers) && 'aifirst.dev/saga' in oldObject.metadata.finalizers && !(has(object.metadata.finalizers) && 'aifirst.dev/saga' in object.metadata.finalizers)))"
{{- end -}}
{{- end -}}

{{- define "airun.webhook" -}}
- name: {{ .id | replace "_" "-" }}.{{ include "airun.webhookConfiguration" .root }}
  admissionReviewVersions: [v1, v1beta1]
  sideEffects: None
  failurePolicy: {{ .failurePolicy | default "Fail" }}
  matchPolicy: Equivalent
  timeoutSeconds: {{ .root.Values.webhook.timeoutSeconds }}
  rules:
    - apiGroups: [{{ ternary .apiGroup "aifirst.dev" (hasKey . "apiGroup") | quote }}]
      apiVersions: [{{ .apiVersion | default "v1alpha1" }}]
      resources: [{{ .plural }}]
      operations: {{ toJson .operations }}
      scope: "*"
  {{- with .objectSelector }}
  objectSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if has "UPDATE" .operations }}
  matchConditions:
    - name: not-metadata-only
      expression: {{ include "airun.matchCondition" .plural }}
  {{- end }}
  clientConfig:
    service:
      name: {{ include "airun.webhookService" .root }}
      namespace: {{ .root.Release.Namespace }}
      path: /{{ .id }}
      port: 443
    {{- if .caBundle }}
    caBundle: {{ .caBundle }}
    {{- end }}
{{- end -}}
