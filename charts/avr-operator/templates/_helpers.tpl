{{/* Chart name, at most 63 characters. */}}
{{- define "avr-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "avr-operator.fullname" -}}
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

{{- define "avr-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "avr-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "avr-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "avr-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: avr
{{- end }}

{{- define "avr-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "avr-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "avr-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "avr-operator.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) }}
{{- end }}

{{/*
Namespaces passed to `avr-operator run --namespace`, as a JSON list: watchNamespaces, else the release
namespace with scope namespaced, else none (every namespace).
*/}}
{{- define "avr-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- else if eq .Values.rbac.scope "namespaced" }}
{{- toJson (list .Release.Namespace) }}
{{- else }}
{{- toJson (list) }}
{{- end }}
{{- end }}

{{/*
What the operator does inside a namespace it watches (avr_operator.apply, avr_operator.handlers and kopf):
- AVRDeployments: kopf lists and watches them, the reconciler reads one (get) and merge-patches its status;
  children carry an ownerReference with blockOwnerDeletion, which needs update on the finalizers subresource.
- Children: server-side apply (patch; create when the object is new), dry-run applies, get of the live object,
  list by label for pruning and for kopf's watches, delete when pruned.
- Secrets and ConfigMaps the spec references: get (the precondition check).
- Events: kopf posts them (core v1) on AVRDeployments.
- The core workers' ServiceAccount, Role and RoleBinding (core.scaleIn.deletionCost). The Role lets the workers
  get and patch pods, and RBAC only lets the operator grant what it holds itself: hence get and patch on pods
  (it never lists, watches, creates or deletes them).
- NetworkPolicies (networkPolicy.enabled) and prometheus-operator PodMonitors (monitoring.podMonitor.enabled),
  children like the others; PodMonitors only where their CRD is installed.
*/}}
{{- define "avr-operator.namespacedRules" -}}
- apiGroups: ["avr.agentvoiceresponse.com"]
  resources: ["avrdeployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["avr.agentvoiceresponse.com"]
  resources: ["avrdeployments/status"]
  verbs: ["patch"]
- apiGroups: ["avr.agentvoiceresponse.com"]
  resources: ["avrdeployments/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Cluster-wide reads kopf needs whatever the scope: it lists and watches CRDs to notice the AVRDeployment
CRD being (re)installed; with explicit namespaces it lists and watches namespaces to match them.
*/}}
{{- define "avr-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if (include "avr-operator.watchNamespaces" . | fromJsonArray) }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
