{{- define "concordkv-cluster.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{- define "concordkv-cluster.labels" -}}
app.kubernetes.io/name: concordkv
app.kubernetes.io/instance: {{ include "concordkv-cluster.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: concordkv
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selects the member pods; the operator sets these labels. */}}
{{- define "concordkv-cluster.podSelector" -}}
app.kubernetes.io/name: concordkv
app.kubernetes.io/instance: {{ include "concordkv-cluster.name" . }}
{{- end -}}
