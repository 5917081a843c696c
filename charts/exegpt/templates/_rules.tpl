{{/*
RBAC rules: only the verbs the operator uses, never `*`.
tests/chart/test_rbac.py checks them against tests/operator/api_usage.json, the
(apiGroup, resource, verb) set the operator's tests record. The comments end up in the
rendered manifests, so `helm template` shows why each rule exists.
*/}}

{{/* The operator's rules on namespaced resources: granted cluster-wide (ClusterRole)
or in each watched namespace (Role). */}}
{{- define "exegpt.operatorRules" -}}
# kopf lists and watches ExeGPTDeployments, and patches them to add its finalizer and
# to keep its handler bookkeeping in annotations.
- apiGroups: ["exegpt.dev"]
  resources: ["exegptdeployments"]
  verbs: ["list", "watch", "patch"]
# The reconciler writes conditions, the plan and the endpoint to the status subresource.
- apiGroups: ["exegpt.dev"]
  resources: ["exegptdeployments/status"]
  verbs: ["patch"]
# Every child's ownerReference sets blockOwnerDeletion: true; where the
# OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift's default),
# setting it needs update on the owner's finalizers subresource. No request uses it.
- apiGroups: ["exegpt.dev"]
  resources: ["exegptdeployments/finalizers"]
  verbs: ["update"]
# Reads the cached profile ConfigMap exegpt-profile-<key>, creates it empty before the
# first profiling Job and records a failure on it; creates each deployment's plan
# ConfigMap <name>-plan and patches it when the plan changes. update: no request uses
# it, but a Role may only grant what its creator holds, and each profiling Job's Role
# grants get, update and patch on its one ConfigMap.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "update"]
# Each profiling Job runs under a service account of its own, <job>, bound to a Role
# <job> that allows only its profile ConfigMap (resourceNames); all three are owned by
# the Job and go with it.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create"]
# The Job's Role and RoleBinding (see above).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create"]
# Creates the client Service <name> and the headless Service <name>-stages; patches
# the client Service when the port or the entry role of the plan changes.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
# Creates the worker StatefulSets, patches them to roll a new plan, and deletes the
# other strategy's StatefulSets when a replan switches RoundRobin <-> WorkloadAware;
# lists a deployment's (by its labels) once per pass instead of reading each role.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Lists profiling Jobs to follow attempts and failures, creates one per attempt, reads
# one back when a concurrent pass created it first (409 AlreadyExists), and deletes the
# failed ones (with their pods) once retries are exhausted and the failure is recorded.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "create", "get", "delete"]
# Each deployment's NetworkPolicy <name>-workers (who may reach the workers' ports):
# created, and patched when spec.runner.allowFrom or the port changes.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
# Lists the entry StatefulSet's pods (by its label selector) to find each replica's
# driver and its pod IP, whose /metrics the drift check reads (spec.drift).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# kopf and the reconciler post Events on the deployments (ProfilingStarted,
# PlanChosen, Replanned, ...).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and (gt (int .Values.replicaCount) 1) .Values.watchNamespaces }}
# Leader election (replicaCount > 1): kopf lists and watches the KopfPeering object of
# each watched namespace and patches its own keep-alive into it.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* The operator's rules on cluster-scoped resources (always a ClusterRole). kopf uses
them to discover what it watches; without them it logs a warning and only scans once
at start. */}}
{{- define "exegpt.discoveryRules" -}}
# kopf watches CustomResourceDefinitions to notice the ExeGPTDeployment CRD being
# installed, upgraded or removed while it runs.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.watchNamespaces) }}
# Leader election (replicaCount > 1), cluster-wide: kopf lists and watches the
# ClusterKopfPeering object and patches its own keep-alive into it.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- if .Values.watchNamespaces }}
# With a list of namespaces to watch, kopf lists and watches Namespaces to start and
# stop watching each one as it appears or goes (cluster-wide it needs no Namespaces).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}
