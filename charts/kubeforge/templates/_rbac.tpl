{{- /*
The operator's namespaced rules (templates/rbac.yaml renders them as a ClusterRole, or as a Role
per watched namespace). Why each rule: docs/security.md, "The operator's RBAC, line by line".
*/ -}}
{{- define "kubeforge.namespacedRules" -}}
# TrainingJobs: watched; a TuningStudy creates its trials and patches them (its stop request
# included; get: on a create conflict). ModelDeployments: watched; a TuningStudy applies
# (creates or patches) the one it promotes the best model to. TuningStudies: only watched.
- apiGroups: [kubeforge.io]
  resources: [trainingjobs, modeldeployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [kubeforge.io]
  resources: [tuningstudies]
  verbs: [list, watch]
# Status of the three: one merge patch per change, nothing else.
- apiGroups: [kubeforge.io]
  resources: [trainingjobs/status, tuningstudies/status, modeldeployments/status]
  verbs: [patch]
# A TrainingJob's Indexed Job: created once (Kueue then owns spec.suspend), server-side
# applied afterwards; get on a create conflict. Never deleted: owner references cascade.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
# Pods of jobs and deployments: termination messages, readiness (list, watch); get: the pod a
# progress report's token is bound to (is it a pod of that TrainingJob's Job?). Never written.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Rendezvous Service of a multi-node job; a ModelDeployment's Service (server-side apply:
# patch, and create when it does not exist yet); a canary rollout's candidate Service, deleted
# when the rollout ends.
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, delete]
# Events for what users must see.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# A ModelDeployment's Deployment (its ReplicaSets only watched, for rollout status), and a
# canary rollout's candidate Deployment, deleted when the rollout ends.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list, watch]
# Its HPA and PDB: deleted when autoscaling is turned off or replicas drop.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
# Its ServiceMonitor and PrometheusRule when the Prometheus Operator's CRDs exist (read
# before written, not watched; deleted when monitoring is turned off).
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, prometheusrules]
  verbs: [get, create, patch, delete]
# A canary rollout's HTTPRoute (rollout.gatewayRef, when the Gateway API is installed): weights
# of the stable and candidate Services; deleted when gatewayRef is dropped.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [create, patch, delete]
{{- if .Values.autoscaling.keda.enabled }}
# KEDA ScaledObject of a ModelDeployment autoscaled on concurrency or rps (read before written,
# not watched; deleted when the metric goes back to cpu/memory). KEDA's own HPA is watched
# through the horizontalpodautoscalers rule above.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, create, patch, delete]
{{- end }}
# Kueue: Workloads say why a job is queued.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch]
{{- if .Values.rbac.cleanupLegacyProgressRBAC }}
# Upgrade from earlier kubeforge versions only: at start-up the operator deletes the Roles/RoleBindings
# those versions made for the old progress channel (found by label). Deleting can take rights
# away, never give any. rbac.cleanupLegacyProgressRBAC=false drops this rule.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, delete]
{{- end }}
{{- end }}
