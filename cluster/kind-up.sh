#!/usr/bin/env bash
# `make kind`: a kind cluster shaped like the local one (needs Docker + the kind CLI; NOT
# available on the project's build machines, where `make cluster` is the way).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kc=${KIND_KUBECONFIG:-$HOME/.kube/kubeforge-kind}
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "make kind: '$tool' not found. kind needs Docker;" \
    "on machines without it use 'make cluster' (kwok-based, same shape)." >&2; exit 1; }
done
kind create cluster --config "$here/kind-config.yaml" --kubeconfig "$kc"
gpu=$(kubectl --kubeconfig "$kc" get nodes -l node.kubernetes.io/instance-type=kind-gpu -o name | head -1)
# fake GPUs: extended resource in node status (kubelet keeps it), plus the usual GPU taint
kubectl --kubeconfig "$kc" patch "$gpu" --subresource=status --type=json \
  -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"}]'
kubectl --kubeconfig "$kc" taint --overwrite "$gpu" nvidia.com/gpu=present:NoSchedule
echo "export KUBECONFIG=$kc"
echo "# run the suites against it: KUBEFORGE_TEST_KUBECONFIG=$kc make integration"
