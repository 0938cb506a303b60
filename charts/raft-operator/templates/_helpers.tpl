{{/*
Chart name, or nameOverride.
*/}}
{{- define "raft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of the release's resources: fullnameOverride, else the release
name, plus the chart name when the release name does not already contain it.
*/}}
{{- define "raft-operator.fullname" -}}
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

{{/*
Name of cluster-scoped objects (ClusterRoles, ClusterRoleBindings): the full
name plus the release namespace, so two releases in two namespaces never clash.
*/}}
{{- define "raft-operator.clusterName" -}}
{{- printf "%s-%s" (include "raft-operator.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
chart label value: name-version.
*/}}
{{- define "raft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every object.
*/}}
{{- define "raft-operator.labels" -}}
helm.sh/chart: {{ include "raft-operator.chart" . }}
{{ include "raft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: raftlane
{{- end }}

{{/*
Labels selecting the operator pods (Deployment selector, metrics Service,
NetworkPolicy). The name is app.kubernetes.io/name=raft-operator unless
nameOverride changes it.
*/}}
{{- define "raft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "raft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "raft-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Namespace whose RaftClusters the operator watches when not cluster-wide.
*/}}
{{- define "raft-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watch.namespace }}
{{- end }}

{{/*
Operator image reference.
*/}}
{{- define "raft-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
RBAC rules of the reconciler: what it reads and writes for RaftClusters, in the
watched namespace (Role) or everywhere (ClusterRole). Leases are not here: the
operator's own Lease lives in the release namespace (see rbac.yaml).
*/}}
{{- define "raft-operator.reconcilerRules" -}}
- apiGroups: ["raftlane.io"]
  resources: ["raftclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["raftlane.io"]
  resources: ["raftclusters/status"]
  verbs: ["patch"]
- apiGroups: ["raftlane.io"]
  resources: ["raftclusters/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
