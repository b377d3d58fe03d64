{{/* Names and labels shared by the templates. */}}

{{- define "converge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already contains the chart's. */}}
{{- define "converge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "converge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "converge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "converge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "converge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: converge
{{- end -}}

{{- define "converge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "converge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "converge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "converge.leaseName" -}}
{{- default (include "converge.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "converge.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.leaseNamespace -}}
{{- end -}}

{{- define "converge.kubernetesBackend" -}}
{{- if has "kubernetes" .Values.backends.enabled -}}true{{- end -}}
{{- end -}}

{{- define "converge.metricsService" -}}
{{- if or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled -}}true{{- end -}}
{{- end -}}

{{/*
The rules the operator needs in each namespace it watches (a Role there, or one
ClusterRole for all namespaces): exactly the verbs it uses, nothing on Secrets beyond
secretNames.
*/}}
{{- define "converge.watchRules" -}}
# ManagedServices: watch them, add/remove converge's finalizer, write status.
- apiGroups: ["converge.dev"]
  resources: ["managedservices"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["converge.dev"]
  resources: ["managedservices/status"]
  verbs: ["get", "patch", "update"]
# Children owned by a ManagedService (ownerReferences with blockOwnerDeletion).
- apiGroups: ["converge.dev"]
  resources: ["managedservices/finalizers"]
  verbs: ["update"]
# Events on ManagedServices (Provisioned, Unhealthy, BackOff, Deprovisioned ...).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if include "converge.kubernetesBackend" . }}
# The kubernetes backend: a Deployment and a Service per ManagedService (server-side apply:
# patch, and create when the object is absent), pods read for rollout failures
# (ImagePullBackOff, CrashLoopBackOff) and logs.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- end }}
{{- with .Values.secretNames }}
# Only the Secrets named in values.
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- end -}}
