#!/usr/bin/env bash
# Called by .ci/run before the integration tests: build (or reuse) the control-plane binaries,
# then prove a cluster starts. Idempotent; a warm cache makes it take a few seconds.
# Cold on 2 shared cores: ~10 min for k8s+etcd+kwok+helm, ~4 min more for kueue.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
t0=$(date +%s)
python3 cluster/build.py
t1=$(date +%s)
echo "[ci-setup] binaries ready in $((t1 - t0))s"
# smoke: start + stop a cluster once (prints its startup time); the tests start their own
"$PY" - <<'PYEOF'
from kubeforge_cluster import LocalCluster
with LocalCluster(name="ci-smoke") as c:
    c.kubectl("get", "nodes", "-o", "wide")
    print(f"[ci-setup] cluster smoke ok: started in {c.startup_seconds:.1f}s")
PYEOF
echo "[ci-setup] done in $(( $(date +%s) - t0 ))s; now: KUBEFORGE_REQUIRE_CLUSTER=1 pytest tests/integration"
