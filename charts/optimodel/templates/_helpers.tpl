{{/*
Names and labels, as in the `helm create` skeleton.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "optimodel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (63 characters at most: some Kubernetes name fields are limited to
this). If the release name contains the chart name it is used as the full name.
*/}}
{{- define "optimodel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "optimodel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels on every object. */}}
{{- define "optimodel.labels" -}}
helm.sh/chart: {{ include "optimodel.chart" . }}
{{ include "optimodel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: optimodel
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels (immutable on the Deployment: never add to these). */}}
{{- define "optimodel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "optimodel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on the CRD: the generated ones (name, part-of) come from the CRD generator. */}}
{{- define "optimodel.crdLabels" -}}
helm.sh/chart: {{ include "optimodel.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* ServiceAccount the operator runs as. */}}
{{- define "optimodel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "optimodel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; tag defaults to the second argument. */}}
{{- define "optimodel.imageRef" -}}
{{- $image := index . 0 }}{{- $defaultTag := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (toString (default $defaultTag $image.tag)) }}
{{- end }}
{{- end }}

{{/* The operator image (also runs the Triton pods' repository-staging init container). */}}
{{- define "optimodel.operatorImage" -}}
{{- include "optimodel.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/*
Namespaced-resource rules of the operator, derived from what it calls (operator/kube.py,
operator/reconcile.py, kopf's watches and Events). No wildcards, no Secrets, no spec writes:
the operator only reads OptimizedModels and patches their status subresource.
*/}}
{{- define "optimodel.operatorRules" -}}
- apiGroups: ["optimodel.dev"]
  resources: ["optimizedmodels"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["optimodel.dev"]
  resources: ["optimizedmodels/status"]
  verbs: ["get", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "patch"]
{{- end }}
