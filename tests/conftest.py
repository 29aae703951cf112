"""Shared root conftest: keep it small and general.

Cluster fixtures (`cluster`, `kubeconfig`, `kube`, `kubectl`, `namespace`, `pod_driver`,
`prometheus_crds`, `kueue`) come from kubeforge_cluster.testing; see cluster/README.md.
"""

pytest_plugins = ["kubeforge_cluster.testing"]
