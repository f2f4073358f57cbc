{{/* Chart name, truncated to 63 characters. */}}
{{- define "evoquality.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release name, plus the chart name unless the release already contains it. */}}
{{- define "evoquality.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "evoquality.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evoquality.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evoquality.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "evoquality.labels" -}}
helm.sh/chart: {{ include "evoquality.chart" . }}
{{ include "evoquality.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: evoquality
{{- end -}}

{{- define "evoquality.operatorName" -}}
{{- printf "%s-operator" (include "evoquality.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evoquality.metricsServiceName" -}}
{{- printf "%s-metrics" (include "evoquality.operatorName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evoquality.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "evoquality.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference. Call with (dict "image" .Values.x "root" .). */}}
{{- define "evoquality.image" -}}
{{- $registry := .root.Values.imageRegistry | trimSuffix "/" -}}
{{- $repo := .image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $repo }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches, as a JSON list ("all" -> empty list). */}}
{{- define "evoquality.watchNamespaces" -}}
{{- if eq .Values.watch.scope "all" -}}
{{- list | toJson -}}
{{- else if eq .Values.watch.scope "namespaces" -}}
{{- if not .Values.watch.namespaces -}}
{{- fail "watch.scope=namespaces needs at least one entry in watch.namespaces" -}}
{{- end -}}
{{- .Values.watch.namespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* The permissions the operator needs on namespaced objects (Role or ClusterRole rules). */}}
{{- define "evoquality.operatorRules" -}}
# Exactly the calls the operator makes (tests/plugins/rbac_record.py compares them over the suite).
- apiGroups: [evoquality.io]
  resources: [evoqualityruns]
  verbs: [get, list, watch, patch]
- apiGroups: [evoquality.io]
  resources: [evoqualityruns/status]
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [create, get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end -}}

{{- define "evoquality.storageSecretName" -}}
{{- default .Values.storageSecret.name .Values.gpuSmoke.storage.secretName -}}
{{- end -}}
