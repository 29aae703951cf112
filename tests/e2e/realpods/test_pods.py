"""Real pods on the real node: exit codes, Jobs, Services + DNS, OOM, and the network guards
(read from state only: routing tables, rules, resolv.conf; no packet leaves the pod network)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from kubeforge_cluster.realnode import RealNode, net
from realpods_support import Kube, pod

pytestmark = pytest.mark.e2e


def test_host_guards_hold(real_node: RealNode) -> None:
    problems = [p for p in real_node.pre_forward_problems() if "ip_forward is already" not in p]
    assert problems == []
    assert net.sysctl_get(net.SYSCTL_FORWARD) == "1"  # on, but only behind the guards
    assert net.check_nat() == []
    assert net.check_listeners() == []
    assert net.check_guard_counters() == []
    assert net.sysctl_get("net.bridge.bridge-nf-call-iptables") == "1"


def test_kubernetes_endpoint_is_bridge_address(real_node: RealNode, kube: Kube) -> None:
    eps = json.loads(
        real_node.kubectl(
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "json",
        ).stdout
    )["items"]
    addrs = [a for e in eps for ep in e["endpoints"] for a in ep["addresses"]]
    assert addrs == [net.NODE_IP]
    assert net.service_rule_present("10.96.0.1")


def test_exit_code_and_termination_message(kube: Kube) -> None:
    kube.apply(
        pod(
            "exit-three",
            ["sh", "-c", "echo 'loss went NaN at step 7' > /dev/termination-log; exit 3"],
        )
    )
    t = kube.wait("pod exit-three terminated", lambda: kube.terminated("exit-three"))
    assert t["exitCode"] == 3
    assert t["reason"] == "Error"
    assert t["message"] == "loss went NaN at step 7\n"
    kube.apply(pod("exit-zero", ["sh", "-c", "echo hello from a real pod"]))
    t = kube.wait("pod exit-zero terminated", lambda: kube.terminated("exit-zero"))
    assert t["exitCode"] == 0
    assert "hello from a real pod" in kube.k("logs", "exit-zero")


def test_job_pod_failure_policy(kube: Kube) -> None:
    kube.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "pfp"},
            "spec": {
                "backoffLimit": 5,
                "podFailurePolicy": {
                    "rules": [
                        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}
                    ]
                },
                "template": {"spec": pod("x", ["sh", "-c", "exit 3"])["spec"]},
            },
        }
    )

    def failed() -> dict[str, object] | None:
        for c in kube.get("job", "pfp").get("status", {}).get("conditions", []):
            if c["type"] == "Failed" and c["status"] == "True":
                return dict(c)
        return None

    c = kube.wait("job pfp Failed", failed)
    assert c["reason"] == "PodFailurePolicy"
    pods = json.loads(kube.k("get", "pods", "-l", "job-name=pfp", "-o", "json"))["items"]
    assert len(pods) == 1  # failed at once, no retries


def test_oomkilled_at_memory_limit(kube: Kube) -> None:
    kube.apply(
        pod(
            "oom",
            ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
            container={"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}},
        )
    )
    t = kube.wait("pod oom terminated", lambda: kube.terminated("oom"))
    assert t["reason"] == "OOMKilled"
    assert t["exitCode"] == 137


def test_clusterip_service_by_dns_name(real_node: RealNode, kube: Kube) -> None:
    labels = {"app": "web"}
    web = pod(
        "web",
        ["httpd", "-f", "-p", "8080", "-h", "/www"],
        container={"readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}},
    )
    web["spec"]["restartPolicy"] = "Always"
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": web["spec"]},
            },
        }
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    client = pod("client", ["sleep", "3600"])
    kube.apply(client)
    kube.wait(
        "web rolled out",
        lambda: kube.get("deployment", "web")["status"].get("readyReplicas") == 2,
        timeout=120,
    )
    ip = kube.get("service", "web")["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(net.SERVICE_CIDR)
    # never send to a ClusterIP before kube-proxy's rule for it exists (REALPODS §9.3 trap 10)
    kube.wait("KUBE-SVC rule for web", lambda: net.service_rule_present(ip), timeout=30)
    kube.wait("client running", lambda: kube.get("pod", "client")["status"]["phase"] == "Running")
    # read-only guards inside a running pod: no default route, DNS only the cluster's
    pid = real_node.pod_sandbox_pid(kube.ns, "client")
    assert net.pod_netns_problems(pid) == []
    resolv = kube.k("exec", "client", "--", "cat", "/etc/resolv.conf")
    assert [ln for ln in resolv.splitlines() if ln.startswith("nameserver")] == [
        f"nameserver {net.NODE_IP}"
    ]
    # every EndpointSlice address stays inside the pod network
    slices = json.loads(kube.k("get", "endpointslices", "-o", "json"))["items"]
    for s in slices:
        for ep in s.get("endpoints") or []:
            for a in ep["addresses"]:
                assert ipaddress.ip_address(a) in ipaddress.ip_network(net.POD_CIDR)
    assert net.check_nat() == []

    # the Service by its DNS name, from another pod (glibc-less busybox: search list applies)
    def fetch() -> str:
        out = kube.k(
            "exec",
            "client",
            "--",
            "timeout",
            "5",
            "wget",
            "-qO-",
            f"http://web.{kube.ns}.svc.cluster.local/",
            check=False,
        )
        return out if "hello from a real pod" in out else ""

    out = kube.wait("web answers by its DNS name", fetch)
    assert "hello from a real pod" in out
    assert "hello from a real pod" in kube.k(
        "exec", "client", "--", "timeout", "5", "wget", "-qO-", "http://web/"
    )
    assert net.check_guard_counters() == []


def test_dns_has_no_upstream(real_node: RealNode, kube: Kube) -> None:
    assert net.check_corefile(real_node.corefile) == []
    # only the cluster's names: CoreDNS itself refuses anything else (it has nowhere to send it)
    kube.apply(pod("dns", ["sleep", "3600"]))
    kube.wait("dns pod running", lambda: kube.get("pod", "dns")["status"]["phase"] == "Running")
    ok = kube.k(
        "exec", "dns", "--", "nslookup", "kubernetes.default.svc.cluster.local.", check=False
    )
    assert "10.96.0.1" in ok
    refused = kube.k("exec", "dns", "--", "nslookup", "example.com.", check=False)
    assert "REFUSED" in refused or "can't find" in refused, refused
