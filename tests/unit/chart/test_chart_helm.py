"""`helm lint` and `helm template` of the chart (Helm 4, and Helm 3 when `helm3` is built).

Skipped without a helm binary (`make cluster-bins` builds it; `cluster/build.py --helm3` adds
helm3). Rendering only: no cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubeforge_cluster.helm import CHART, Helm, HelmError, cluster_role, find_helm, rendered_env

HELMS = [h for h in ("helm", "helm3") if find_helm(h) is not None] or ["helm"]
SAMPLE = CHART / "ci" / "sample-values.yaml"


@pytest.fixture(params=HELMS, scope="module")
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    path = find_helm(request.param)
    if path is None:
        pytest.skip(f"no {request.param} binary (make cluster-bins)")
    return Helm(path, home=tmp_path_factory.mktemp(request.param))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_lint_defaults_and_sample_values(helm: Helm) -> None:
    helm("lint", str(CHART), "--strict")
    helm("lint", str(CHART), "--strict", "--values", str(SAMPLE))


def test_template_defaults(helm: Helm) -> None:
    objs = helm.template()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Role",  # the Lease (leader election)
            "RoleBinding",
            "Service",
            "Service",
            "Secret",
            "Deployment",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    ), kinds
    (dep,) = by_kind(objs, "Deployment")
    assert dep["metadata"]["namespace"] == "kubeforge-system"
    # two replicas behind a Lease: one reconciles, a rolling update never runs two leaders
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/kubeforge/operator:0.1.0"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert c["args"] == ["--metrics-port=8000"]
    env = rendered_env(objs)
    assert env["KUBEFORGE_TRAINER_IMAGE"] == "ghcr.io/kubeforge/trainer:0.1.0"
    assert env["KUBEFORGE_ARTIFACT_STORE"] == "file:///var/lib/kubeforge/artifacts"
    assert env["KUBEFORGE_NAMESPACES"] == ""
    assert env["KUBEFORGE_LEADER_ELECTION"] == "true"
    assert env["KUBEFORGE_LEASE_NAMESPACE"] == "kubeforge-system"
    assert env["KUBEFORGE_READINESS_PORT"] == "8081"
    (role,) = by_kind(objs, "Role")
    assert role["metadata"]["namespace"] == "kubeforge-system"
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["get", "create", "patch"]} in role["rules"]
    (sa,) = by_kind(objs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == "kubeforge"
    for b in by_kind(objs, "ClusterRoleBinding"):
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubeforge", "namespace": "kubeforge-system"}
        ]


def test_operator_pod_is_pod_security_restricted(helm: Helm) -> None:
    (dep,) = by_kind(helm.template(), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["runAsNonRoot"] is True
        assert "privileged" not in sc


def test_cluster_role_is_least_privilege(helm: Helm) -> None:
    objs = helm.template()
    for role in by_kind(objs, "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "*" not in rule["apiGroups"], rule
            assert "secrets" not in rule["resources"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            if "configmaps" in rule["resources"]:
                pytest.fail("the operator never reads ConfigMaps; the kubelet mounts them")
    discovery = cluster_role(objs, "kubeforge-discovery")
    for rule in discovery["rules"]:
        if rule["resources"] == ["tokenreviews"]:
            assert rule["verbs"] == ["create"]  # the progress endpoint's TokenReviews
        else:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    # nobody is granted anything through the operator: no pod writes, no RBAC or SA creation
    main = cluster_role(objs, "kubeforge")
    for rule in main["rules"]:
        if "pods" in rule["resources"]:
            assert set(rule["verbs"]) == {"get", "list", "watch"}, rule
        assert "serviceaccounts" not in rule["resources"], rule
        if {"roles", "rolebindings"} & set(rule["resources"]):
            assert set(rule["verbs"]) == {"list", "delete"}, rule  # legacy cleanup only


def test_progress_endpoint_and_admission_policy(helm: Helm) -> None:
    objs = helm.template()
    env = rendered_env(objs)
    assert env["KUBEFORGE_PROGRESS_URL"] == "https://kubeforge-progress.kubeforge-system.svc:8443"
    assert env["KUBEFORGE_PROGRESS_CERT_FILE"] == "/etc/kubeforge/progress-tls/tls.crt"
    (svc,) = [s for s in by_kind(objs, "Service") if s["metadata"]["name"] == "kubeforge-progress"]
    assert svc["spec"]["ports"][0]["targetPort"] == "progress"
    (secret,) = by_kind(objs, "Secret")
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    (vap,) = by_kind(objs, "ValidatingAdmissionPolicy")
    rules = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rules[0]["resources"] == ["trainingjobs", "tuningstudies", "modeldeployments"]
    assert rules[0]["operations"] == ["CREATE", "UPDATE"]
    exempt = vap["spec"]["matchConditions"][0]["expression"]
    assert "system:serviceaccount:kubeforge-system:kubeforge'" in exempt
    assert len(vap["spec"]["validations"]) == 1
    strict = helm.template(values={"admissionPolicy": {"mode": "strict"}})
    (vap,) = by_kind(strict, "ValidatingAdmissionPolicy")
    assert len(vap["spec"]["validations"]) == 2
    assert "secrets" in vap["spec"]["variables"][-1]["expression"]
    cm = helm.template(values={"progress": {"certManager": {"enabled": True}}})
    assert by_kind(cm, "Secret") == []
    assert sorted(o["metadata"]["name"] for o in cm if o["kind"] == "Certificate") == [
        "kubeforge-progress-ca",
        "kubeforge-progress-tls",
    ]


def test_template_sample_values(helm: Helm) -> None:
    objs = helm.template("--values", str(SAMPLE))
    (dep,) = by_kind(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert c["args"] == ["--namespace=team-a", "--namespace=team-b", "--metrics-port=8000"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    env = rendered_env(objs)
    assert env["KUBEFORGE_NAMESPACES"] == "team-a,team-b"
    assert env["KUBEFORGE_ARTIFACT_STORE"] == "s3://ml-artifacts/kubeforge/"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["KUBEFORGE_LOG_LEVEL"] == "DEBUG"
    # Namespaced Roles per watched namespace (besides the Lease's Role in the release's own);
    # only discovery (and TokenReviews) cluster-wide.
    rbs = [rb for rb in by_kind(objs, "RoleBinding") if rb["roleRef"]["name"] == "kubeforge"]
    assert sorted(rb["metadata"]["namespace"] for rb in rbs) == ["team-a", "team-b"]
    assert all(rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                 "name": "kubeforge"} for rb in rbs)
    roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "kubeforge"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert [r["metadata"]["name"] for r in by_kind(objs, "ClusterRole")] == ["kubeforge-discovery"]
    (crb,) = by_kind(objs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "kubeforge-discovery"
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    (sa,) = by_kind(objs, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]


def test_toggles(helm: Helm) -> None:
    objs = helm.template(
        values={
            "metrics": {"enabled": False},
            "serviceMonitor": {"enabled": True},
            "admissionPolicy": {"enabled": False},
            "rbac": {"create": False},
            "serviceAccount": {"create": False, "name": "existing"},
        }
    )
    assert sorted(o["kind"] for o in objs) == ["Deployment", "Secret", "Service"]
    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["--metrics-port=0"]
    assert [p["name"] for p in c["ports"]] == ["progress", "health", "ready"]


def test_one_replica_without_leader_election_recreates(helm: Helm) -> None:
    objs = helm.template(values={"replicas": 1, "leaderElection": {"enabled": False}})
    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert rendered_env(objs)["KUBEFORGE_LEADER_ELECTION"] == "false"
    with pytest.raises(HelmError, match="leaderElection"):
        helm.template(values={"replicas": 2, "leaderElection": {"enabled": False}})


def test_release_name_drives_the_names(helm: Helm) -> None:
    objs = helm.template(release="ml")
    names = {o["metadata"]["name"] for o in objs if o["kind"] != "ValidatingAdmissionPolicy"}
    assert "ml-kubeforge" in names and "ml-kubeforge-metrics" in names


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"artifactStore": "ftp://host/models"}, "artifactStore"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"replicaCount": 3}, "replicaCount"),
        ({"metrics": {"port": 0}}, "port"),
        ({"metrics": {"prot": 8000}}, "prot"),
        ({"images": {"trainer": ""}}, "trainer"),
        ({"operator": {"concurrency": "many"}}, "concurrency"),
        ({"operator": {"logFormat": "xml"}}, "logFormat"),
        ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
        ({"serviceMonitor": {"enabled": "yes"}}, "enabled"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"admissionPolicy": {"mode": "lax"}}, "mode"),
        ({"progress": {"tokenSeconds": 60}}, "tokenSeconds"),
    ],
)
def test_bad_values_are_refused(helm: Helm, values: dict[str, Any], words: str) -> None:
    with pytest.raises(HelmError) as err:
        helm.template(values=values)
    assert "schema" in err.value.stderr.lower() or "values" in err.value.stderr.lower()
    assert words in err.value.stderr, err.value.stderr


def test_notes_render(helm: Helm) -> None:
    if helm.major == 3:
        pytest.skip(
            "helm3 built by `go install` has Kubernetes v1.20 as its client-side default and "
            "`install --dry-run=client` takes no --kube-version (helm 4 checks NOTES; the "
            "integration test installs with helm3 into the real cluster)"
        )
    # helm template does not render NOTES; install --dry-run does (no cluster: client-only).
    out = helm("install", "kubeforge", str(CHART), "--dry-run=client", "--namespace", "ns")
    assert "kubectl apply --server-side --force-conflicts" in out.stdout
    assert "pod-local" in out.stdout
    manifest = out.stdout.split("NOTES:")[0].split("MANIFEST:")[-1]
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    assert any(d.get("kind") == "Deployment" for d in docs)
