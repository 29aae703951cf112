"""The progress channel on the real API server: training pods report to the operator's endpoint
with a token bound to their pod; nobody gains any RBAC.

- progress reaches the TrainingJob's status through the endpoint, from the real built-in trainer
  and from a BYO command under `kubeforge-report`, both run by the pod player with a real bound
  token (TokenRequest), exactly as a kubelet-projected token;
- each wrong token is refused (401/403) and counted by reason: a pod of another TrainingJob, a
  bystander pod, an expired token (signed with the cluster's own key), a token for another
  audience; a 1 MB body is 413;
- after TrainingJobs of several ServiceAccounts ran, no ServiceAccount of the namespace can do
  anything more than before (`kubectl auth can-i --list`), and `default` may not patch a
  bystander pod.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from kubeforge_cluster.podplayer import PodPlayer
from kubeforge_cluster.progress import mint_pod_token, post_report, report_path
from tj_support import apply, get_tj, trainingjob, wait_phase

pytestmark = pytest.mark.integration

REPORT = {"seq": 1, "step": 7, "epoch": 1, "metrics": {"loss": 0.5}}


def refusals(operator: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in operator.metrics().splitlines():
        if line.startswith("kubeforge_progress_refusals_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def bystander_pod(kube: Any, namespace: str, name: str = "bystander") -> dict[str, Any]:
    pod: dict[str, Any] = kube.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "example.invalid/app:1"}]},
        },
    )
    return pod


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expired_token(cluster: Any, kube: Any, pod: dict[str, Any]) -> str:
    """A token for `pod` signed with the cluster's own service-account key, expired an hour ago
    (the API's minimum lifetime is 10 minutes, so a minted one cannot expire within a test)."""
    key = serialization.load_pem_private_key((Path(cluster.pki_dir) / "sa.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    meta = pod["metadata"]
    sa = kube.get(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/default")
    now = int(time.time())
    claims = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["kubeforge.io/progress"],
        "sub": f"system:serviceaccount:{meta['namespace']}:default",
        "iat": now - 7200,
        "nbf": now - 7200,
        "exp": now - 3600,
        "kubernetes.io": {
            "namespace": meta["namespace"],
            "pod": {"name": meta["name"], "uid": meta["uid"]},
            "serviceaccount": {"name": "default", "uid": sa["metadata"]["uid"]},
        },
    }
    head = _b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{head}.{body}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_reports_reach_status_and_every_wrong_token_is_refused_and_counted(
    operator: Any, cluster: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any
) -> None:
    apply(kubectl, namespace, trainingjob("guarded"))
    apply(kubectl, namespace, trainingjob("neighbour"))
    (mine,) = pod_driver.wait_pods("kubeforge.io/trainingjob=guarded", count=1, phase="Running")
    (theirs,) = pod_driver.wait_pods("kubeforge.io/trainingjob=neighbour", count=1, phase="Running")
    wait_phase(kube, namespace, "guarded", "Running")
    # the pod's spec is what the kubelet mounts: a projected token for our audience, no API token
    spec = mine["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert any("projected" in v for v in spec["volumes"])
    url = operator.progress_endpoint + report_path(namespace, "guarded")
    ca = operator.progress_tls.ca_file

    token = mint_pod_token(kube, mine)
    code, answer = post_report(url, token, {**REPORT, "time": time.time()}, ca)
    assert (code, answer) == (200, {"accepted": True, "stop": None})
    kube.wait_for(
        "progress in status",
        lambda: get_tj(kube, namespace, "guarded")["status"].get("progress")
        == {"step": 7, "epoch": 1, "metrics": {"loss": 0.5}},
        timeout=20,
    )

    bystander = bystander_pod(kube, namespace)
    before = refusals(operator)
    cases = [
        ("a pod of another TrainingJob", mint_pod_token(kube, theirs), 403, "other-trainingjob"),
        ("a pod of no TrainingJob", mint_pod_token(kube, bystander), 403, "other-trainingjob"),
        ("an expired token", expired_token(cluster, kube, mine), 401, "expired-token"),
        ("another audience", mint_pod_token(kube, mine, audience="api"), 401, "wrong-audience"),
        ("no token", None, 401, "no-token"),
    ]
    for what, tok, want, reason in cases:
        code, answer = post_report(url, tok, {**REPORT, "time": time.time()}, ca)
        assert (code, answer.get("reason")) == (want, reason), (what, answer)
    code, answer = post_report(url, token, b"{" + b" " * 1_048_576 + b"}", ca)
    assert code == 413 and answer["reason"] == "too-large"
    after = refusals(operator)
    for reason, n in {"other-trainingjob": 2, "expired-token": 1, "wrong-audience": 1,
                      "no-token": 1, "too-large": 1}.items():
        assert after.get(reason, 0) - before.get(reason, 0) == n, (reason, before, after)
    # none of them moved the status
    assert get_tj(kube, namespace, "guarded")["status"]["progress"]["step"] == 7


def can_i_list(kubectl: Any, namespace: str, sa: str) -> str:
    return str(kubectl("auth", "can-i", "--list", "-n", namespace,
                       f"--as=system:serviceaccount:{namespace}:{sa}"))


def test_no_service_account_gains_a_verb(
    operator: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any
) -> None:
    for sa in ("trainer-a", "trainer-b"):
        kube.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                  {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
    accounts = ("default", "trainer-a", "trainer-b")
    before = {sa: can_i_list(kubectl, namespace, sa) for sa in accounts}
    bystander = bystander_pod(kube, namespace)
    for name, sa in (("as-default", None), ("as-a", "trainer-a"), ("as-b", "trainer-b")):
        pod = {"serviceAccountName": sa} if sa else {}
        apply(kubectl, namespace, trainingjob(name, pod=pod))
    for name in ("as-default", "as-a", "as-b"):
        pod_driver.wait_pods(f"kubeforge.io/trainingjob={name}", count=1, phase="Running")
        wait_phase(kube, namespace, name, "Running")
    time.sleep(2)  # anything the operator would make per namespace is made by now
    assert {sa: can_i_list(kubectl, namespace, sa) for sa in accounts} == before
    roles = kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings")
    assert roles["items"] == []
    # a pod running as `default` cannot touch another pod (the hole of issue 16)
    user = f"system:serviceaccount:{namespace}:default"
    patch = json.dumps({"spec": {"containers": [{"name": "c", "image": "evil.example/x:1"}]}})
    res = kubectl.result("patch", "pod", bystander["metadata"]["name"], "-n", namespace,
                         "--type=strategic", "-p", patch, f"--as={user}")
    assert res.returncode != 0 and "forbidden" in res.stderr.lower(), res.stderr
    got = kube.get(f"/api/v1/namespaces/{namespace}/pods/{bystander['metadata']['name']}")
    assert got["spec"]["containers"][0]["image"] == "example.invalid/app:1"


@pytest.fixture
def player(operator: Any, kube: Any, namespace: str, tmp_path: Path) -> Iterator[PodPlayer]:
    p = PodPlayer(kube, tmp_path / "player", [namespace],
                  progress_endpoint=operator.progress_endpoint).start()
    yield p
    p.stop()


BYO = (
    "import time\n"
    "for epoch in range(1, 4):\n"
    "    print(f'epoch={epoch} loss={1.0 / epoch:.3f}', flush=True)\n"
    "    time.sleep(1.5)\n"
)


def test_trainers_run_by_the_pod_player_report_through_the_endpoint(
    operator: Any, kube: Any, kubectl: Any, namespace: str, player: PodPlayer
) -> None:
    """The built-in trainer and a BYO command under kubeforge-report, each with a real token
    bound to its pod: the progress (and then the result) reaches the status."""
    apply(kubectl, namespace, trainingjob("builtin", hyperparameters={"epochs": 3}))
    apply(kubectl, namespace, trainingjob(
        "byo", model=None, dataset=None, image="example.invalid/byo:1",
        command=["python3", "-c", BYO],
        metricsCollector={"kind": "StdOut", "format": "text"},
    ))
    seen: dict[str, Any] = {}

    def progressed(name: str) -> Any:
        st = get_tj(kube, namespace, name).get("status") or {}
        if st.get("phase") == "Failed":
            raise AssertionError(f"{name} failed: {st.get('message')}")
        if st.get("progress", {}).get("metrics") and st.get("phase") in ("Running", "Succeeded"):
            seen.setdefault(name, st["progress"])
        return st.get("phase") == "Succeeded" and name in seen

    for name in ("byo", "builtin"):
        kube.wait_for(f"{name} progressed and succeeded", lambda n=name: progressed(n), timeout=180)
    assert "loss" in seen["byo"]["metrics"]
    assert seen["builtin"]["metrics"]
    reports = [line for line in operator.metrics().splitlines()
               if line.startswith("kubeforge_progress_reports_total")]
    assert reports and float(reports[0].rsplit(" ", 1)[1]) >= 2
    # the player had nothing to patch: no pod carries a progress annotation
    for pod in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]:
        assert "kubeforge.io/progress" not in (pod["metadata"].get("annotations") or {})


def test_a_pruned_trial_is_told_to_stop_through_the_answer(
    operator: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any
) -> None:
    """The stop request lives on the TrainingJob (its owner writes it there); the endpoint
    answers it to the trainer's next report."""
    apply(kubectl, namespace, trainingjob("trial"))
    (pod,) = pod_driver.wait_pods("kubeforge.io/trainingjob=trial", count=1, phase="Running")
    url = operator.progress_endpoint + report_path(namespace, "trial")
    token = mint_pod_token(kube, pod)
    code, answer = post_report(url, token, {**REPORT, "time": time.time()}, operator.progress_tls.ca_file)
    assert (code, answer["stop"]) == (200, None)
    kube.patch(f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/trainingjobs/trial",
               {"metadata": {"annotations": {"kubeforge.io/stop": "pruned"}}})

    def answered() -> bool:
        code, answer = post_report(url, token, {**REPORT, "time": time.time()}, operator.progress_tls.ca_file)
        return code == 200 and answer["stop"] == "pruned"

    # the endpoint reads the TrainingJob from the operator's index: answered once the watch saw it
    kube.wait_for("stop answered", answered, timeout=20, interval=1.0)
