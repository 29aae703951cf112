"""Where a rollout's analysis gets its figures: each server pod's `/metrics` (the default), or a
Prometheus that scrapes them (`analysis.prometheus.url`). Both give cumulative counters per pod,
which `analysis.StepWindow` turns into the step's increase (counter resets included).

Series read (kubeforge_server.metrics): `kubeforge_server_requests_total` (5xx = errors),
`kubeforge_server_request_duration_seconds_bucket`, `kubeforge_server_shadow_requests_total`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.modeldeployment.analysis import Counters

log = logging.getLogger("kubeforge.modeldeployment.rollout")

REQUESTS = "kubeforge_server_requests_total"
LATENCY_BUCKET = "kubeforge_server_request_duration_seconds_bucket"
SHADOW = "kubeforge_server_shadow_requests_total"
SCRAPE_TIMEOUT_SECONDS = 3.0

Sample = tuple[str, Mapping[str, str], float]
"""(series name, labels, value)."""


def counters_from_samples(samples: Iterable[Sample], model: str) -> Counters:
    """The counters of one server process for the served model `model`."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    shadow: dict[str, float] = {}
    for name, labels, value in samples:
        if labels.get("model") != model:
            continue
        if name == REQUESTS:
            requests += value
            if str(labels.get("code", "")).startswith("5"):
                errors += value
        elif name == LATENCY_BUCKET:
            le = labels.get("le", "+Inf")
            bound = math.inf if le in ("+Inf", "Inf") else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value  # summed over protocols
        elif name == SHADOW:
            outcome = labels.get("outcome", "")
            shadow[outcome] = shadow.get(outcome, 0.0) + value
    return Counters(
        requests=requests,
        errors=errors,
        latency=tuple(sorted(buckets.items())),
        agreed=shadow.get("agreed", 0.0),
        disagreed=shadow.get("disagreed", 0.0),
        failed=shadow.get("failed", 0.0),
        dropped=shadow.get("dropped", 0.0),
    )


def counters_from_text(text: str, model: str) -> Counters:
    """Counters from a Prometheus text exposition (a server's /metrics)."""
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.append((s.name, s.labels, float(s.value)))
    return counters_from_samples(samples, model)


async def scrape_pods(
    session: aiohttp.ClientSession, pods: Mapping[str, tuple[str, str]], port: int, model: str
) -> dict[str, tuple[str, Counters]]:
    """pod name → (track, address) ⇒ pod name → (track, counters). Pods that do not answer are
    left out (their next answer is compared with their last one, or is a reset)."""

    async def one(name: str, track: str, ip: str) -> tuple[str, tuple[str, Counters]] | None:
        url = f"http://{ip}:{port}/metrics"
        try:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
            async with session.get(url, timeout=timeout) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("scraping %s: %s", url, exc)
            return None
        return name, (track, counters_from_text(text, model))

    results = await asyncio.gather(*(one(n, t, ip) for n, (t, ip) in pods.items() if ip))
    return dict(r for r in results if r is not None)


def prometheus_query(namespace: str, model: str) -> str:
    names = "|".join((REQUESTS, LATENCY_BUCKET, SHADOW))
    return f'{{__name__=~"{names}",namespace="{namespace}",model="{model}"}}'


def counters_from_prometheus(
    result: list[Any], model: str, tracks: Mapping[str, str]
) -> dict[str, tuple[str, Counters]]:
    """An instant-vector answer (`data.result`) grouped by its `pod` label → counters per pod;
    `tracks`: pod name → stable / candidate (pods not listed are not ours or gone)."""
    per_pod: dict[str, list[Sample]] = {}
    for item in result:
        labels = dict(item.get("metric") or {})
        pod = labels.get("pod", "")
        if pod not in tracks:
            continue
        value = float(item["value"][1])
        per_pod.setdefault(pod, []).append((labels.pop("__name__", ""), labels, value))
    return {
        pod: (tracks[pod], counters_from_samples(samples, model))
        for pod, samples in per_pod.items()
    }


async def query_prometheus(
    session: aiohttp.ClientSession, base_url: str, namespace: str, model: str,
    tracks: Mapping[str, str],
) -> dict[str, tuple[str, Counters]]:
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
        async with session.get(
            url, params={"query": prometheus_query(namespace, model)}, timeout=timeout
        ) as resp:
            doc = await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        log.warning("querying Prometheus at %s: %s", url, exc)
        return {}
    if doc.get("status") != "success":
        log.warning("Prometheus at %s answered %s", url, doc.get("error"))
        return {}
    return counters_from_prometheus(doc["data"].get("result") or [], model, tracks)
