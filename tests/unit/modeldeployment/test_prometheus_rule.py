"""The generated PrometheusRule passes `promtool check rules`, and each alert fires (and stays
quiet) as intended under `promtool test rules`. promtool comes with Debian's `prometheus`
package (`apt-get install -y prometheus`); without it these tests skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.modeldeployment.build import build_prometheus_rule
from kubeforge.settings import Settings

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install -y prometheus)"
)

MD = {
    "apiVersion": "kubeforge.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "u"},
}
SEL = 'namespace="ml",model="digits"'
DEP = 'namespace="ml",deployment="digits"'


def rules_file(tmp_path: Path, monitoring: dict[str, Any] | None = None) -> Path:
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "s3://b/m/"}, "monitoring": monitoring or {}}
    )
    rule = build_prometheus_rule(MD, spec, Settings()).manifest
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_check_rules(tmp_path: Path) -> None:
    out = promtool("check", "rules", str(rules_file(tmp_path)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 rules found" in out.stdout


def _alert(name: str, at: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": alerts}


def _labels(**extra: str) -> dict[str, str]:
    return {"severity": "warning", "modeldeployment": "digits", **extra}


def test_each_alert(tmp_path: Path) -> None:
    rules = rules_file(tmp_path)
    firing = {
        "interval": "1m",
        "input_series": [
            # 10% of requests fail with a 500
            {"series": f'kubeforge_server_requests_total{{{SEL},protocol="http",code="200"}}',
             "values": "0+90x40"},
            {"series": f'kubeforge_server_requests_total{{{SEL},protocol="http",code="500"}}',
             "values": "0+10x40"},
            # every request takes between 1 s and 2.5 s
            *[
                {"series": f'kubeforge_server_request_duration_seconds_bucket{{{SEL},'
                           f'protocol="http",le="{le}"}}',
                 "values": "0+0x40" if le in ("0.5", "1.0") else "0+100x40"}
                for le in ("0.5", "1.0", "2.5", "+Inf")
            ],
            # 1 of 3 replicas available
            {"series": f"kube_deployment_spec_replicas{{{DEP}}}", "values": "3x40"},
            {"series": f"kube_deployment_status_replicas_available{{{DEP}}}", "values": "1x40"},
        ],
        "alert_rule_test": [
            # not yet: each alert waits for its `for`
            _alert("KubeforgeModelHighErrorRate", "3m", []),
            _alert("KubeforgeModelHighLatency", "8m", []),
            _alert("KubeforgeModelReplicasNotReady", "8m", []),
            _alert("KubeforgeModelHighErrorRate", "15m", [{
                "exp_labels": _labels(severity="critical"),
                "exp_annotations": {
                    "summary": "Model ml/digits: high error rate",
                    "description": "10% of requests to model ml/digits failed with a 5xx over "
                    "the last 5 minutes (threshold 5%).",
                },
            }]),
            _alert("KubeforgeModelHighLatency", "20m", [{
                "exp_labels": _labels(),
                "exp_annotations": {
                    "summary": "Model ml/digits: high p99 latency",
                    "description": "p99 latency of model ml/digits is 2.485s (threshold 1s).",
                },
            }]),
            _alert("KubeforgeModelReplicasNotReady", "20m", [{
                "exp_labels": _labels(namespace="ml", deployment="digits"),
                "exp_annotations": {
                    "summary": "Model ml/digits: replicas not ready",
                    "description": "2 replica(s) of model ml/digits have not been ready for 10 "
                    "minutes (crash loop, load failure or no room to schedule): "
                    "kubectl describe modeldeployment -n ml digits",
                },
            }]),
        ],
    }  # fmt: skip
    healthy = {
        "interval": "1m",
        "input_series": [
            {"series": f'kubeforge_server_requests_total{{{SEL},protocol="http",code="200"}}',
             "values": "0+99x40"},
            {"series": f'kubeforge_server_requests_total{{{SEL},protocol="http",code="500"}}',
             "values": "0+1x40"},
            # 4xx are the client's fault: never an error-rate alert
            {"series": f'kubeforge_server_requests_total{{{SEL},protocol="http",code="400"}}',
             "values": "0+50x40"},
            *[
                {"series": f'kubeforge_server_request_duration_seconds_bucket{{{SEL},'
                           f'protocol="http",le="{le}"}}',
                 "values": "0+100x40"}
                for le in ("0.5", "1.0", "2.5", "+Inf")
            ],
            {"series": f"kube_deployment_spec_replicas{{{DEP}}}", "values": "3x40"},
            {"series": f"kube_deployment_status_replicas_available{{{DEP}}}", "values": "3x40"},
            # another model's trouble is not ours
            {"series": 'kubeforge_server_requests_total{namespace="ml",model="other",'
                       'protocol="http",code="500"}', "values": "0+100x40"},
        ],
        "alert_rule_test": [
            _alert("KubeforgeModelHighErrorRate", "30m", []),
            _alert("KubeforgeModelHighLatency", "30m", []),
            _alert("KubeforgeModelReplicasNotReady", "30m", []),
        ],
    }  # fmt: skip
    test = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [firing, healthy]}
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    out = promtool("test", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_thresholds_follow_the_spec(tmp_path: Path) -> None:
    path = rules_file(tmp_path, {"errorRateThreshold": 0.2, "latencyP99Ms": 250})
    text = path.read_text()
    assert "> 0.2" in text and "> 0.25" in text
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
