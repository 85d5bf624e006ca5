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

{{- define "airun.notifySecret" -}}
{{- default (printf "%s-notify" (include "airun.fullname" .)) .Values.notify.existingSecret -}}
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
{{- define "airun.webhook" -}}
- name: {{ .id | replace "_" "-" }}.{{ include "airun.webhookConfiguration" .root }}
  admissionReviewVersions: [v1, v1beta1]
  sideEffects: None
  failurePolicy: Fail
  matchPolicy: Equivalent
  timeoutSeconds: {{ .root.Values.webhook.timeoutSeconds }}
  rules:
    - apiGroups: [aifirst.dev]
      apiVersions: [v1alpha1]
      resources: [{{ .plural }}]
      operations: {{ toJson .operations }}
      scope: "*"
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
