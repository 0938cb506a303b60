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
Labels of the operator pods as a NetworkPolicy selects them: the Deployment's
selector plus its component label (both set on the pod template).
*/}}
{{- define "raft-operator.operatorPodLabels" -}}
{{ include "raft-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels the operator sets on every member pod of every RaftCluster (see
operator/src/k8s/resources.rs): the chart's NetworkPolicy selects the members
by these. The operator adds app.kubernetes.io/instance=<cluster name>, which
its per-cluster NetworkPolicy `<cluster>-peers` selects on.
*/}}
{{- define "raft-operator.memberPodLabels" -}}
app.kubernetes.io/name: raft-node
app.kubernetes.io/managed-by: raft-operator
{{- end }}

{{/*
The operator pods as a NetworkPolicyPeer of a policy in namespace .ns (a
dict: ns, root): a podSelector, plus a namespaceSelector on the release
namespace when the policy lives in another one.
*/}}
{{- define "raft-operator.operatorPeer" -}}
{{- if ne .ns .root.Release.Namespace }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .root.Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "raft-operator.operatorPodLabels" .root | nindent 6 }}
{{- else }}
- podSelector:
    matchLabels:
      {{- include "raft-operator.operatorPodLabels" .root | nindent 6 }}
{{- end }}
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
Namespaces that get the members' NetworkPolicy, comma-separated: the watched
one, or networkPolicy.namespaces (default: the release namespace) when all are
watched. The operator adds its per-cluster peer policy only there: alone, that
policy would close every other port of the members.
*/}}
{{- define "raft-operator.policyNamespaces" -}}
{{- if .Values.watch.allNamespaces }}
{{- join "," (.Values.networkPolicy.namespaces | default (list .Release.Namespace)) }}
{{- else }}
{{- include "raft-operator.watchNamespace" . }}
{{- end }}
{{- end }}

{{/*
Operator image reference.
*/}}
{{- define "raft-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
RBAC rules of the reconciler: what it reads and writes for RaftClusters, in the
watched namespace (Role) or everywhere (ClusterRole), bound to the operator's
ServiceAccount only. Leases are not here: the operator's own Lease lives in the
release namespace (see rbac.yaml).
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
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create"]
# Only the verbs the operator calls: each cluster's peer policy is read,
# created, or deleted where the chart's policy is absent (k8s/controller.rs).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "delete"]
# Secrets: each cluster's CA and its certificates, listed by label, created,
# replaced on renewal, deleted with a member (k8s/tls.rs, k8s/runtime.rs).
# Only this role (bound to the operator's ServiceAccount) is granted them.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "create", "update", "delete"]
# cert-manager Certificates, for clusters that set spec.tls.issuerRef: read,
# created when missing (k8s/tls.rs); they go with the RaftCluster (owned).
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
