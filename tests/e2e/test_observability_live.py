"""The chart's Grafana dashboard and alerting rules against a real Prometheus scraping real workers.

Two workers (`avr-runtime serve`) run as the pods `core-a` and `core-b` of namespace `voice`: Debian's Prometheus
scrapes both every second under those labels (as Kubernetes service discovery would label them) and evaluates
the chart's rules file every second. core-a talks to the echo provider (`avr-runtime provider sts`) with
MAX_CONCURRENT_CALLS=2 and asks its peers for calls that arrive without metadata; core-b's provider is a port
nothing listens on. The calls: two of real speech that end (hangup), two that stay live, one refused at
capacity, one on core-b that fails to reach its provider. Then every panel's query, its template variables
substituted as Grafana would, must return data through Prometheus' HTTP API, except the panels listed in
EXEMPT (whose queries must still be valid PromQL); every rule must evaluate without error, and the capacity
alert must be pending for core-a, which is full.

No Kubernetes control plane: the panels that need one (kube-state-metrics, the operator) are the exempt ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import Proc, ProviderFactory, WorkerFactory, free_port, sts_url

from avr_devcluster.binaries import MissingBinariesError
from avr_devcluster.prometheus import PrometheusServer, Target
from avr_devcluster.testing import in_ci
from avr_runtime.client.audiosocket import CallResult, place_call

ROOT = Path(__file__).resolve().parents[2]
CHART_FILES = ROOT / "charts" / "avr-operator" / "files"
DASHBOARD = CHART_FILES / "grafana-dashboard.json"
RULES = CHART_FILES / "prometheus-rules.yaml"
NAMESPACE = "voice"
PODS = ("core-a", "core-b")
#: What Grafana substitutes: a multi-value variable becomes a regex group; $__rate_interval at least 4 scrapes.
VARIABLES = {"$namespace": NAMESPACE, "$pod": "(core-a|core-b)", "$__rate_interval": "2m"}
EXEMPT = {
    "Autoscaler replicas": "kube-state-metrics' HPA series: needs the Kubernetes control plane and kube-state-metrics",
    "Operator reconcile errors": "the operator's metrics: it runs only against a Kubernetes API server",
}
#: Panels the calls of this test must move above zero (at least one of their queries, one series).
POSITIVE = {
    "Calls in progress", "Fleet utilisation", "Calls in progress and capacity per pod", "Utilisation per pod",
    "Calls started", "Calls ended by reason", "Calls refused by reason", "Call duration", "Time to first audio",
    "Frame latency", "Frames sent", "Provider errors", "Provider retries", "Resident memory",
    "Call objects and live calls", "Peer lookups",
}  # fmt: skip
#: How long the two live calls would last: longer than the test.
HELD_SECONDS = 120.0
#: Seconds between two calls of a kind: more than two scrapes.
SPACING = 2.5


@pytest.fixture
def prometheus() -> Iterator[PrometheusServer]:
    try:
        server = PrometheusServer([RULES])
    except MissingBinariesError as error:
        if in_ci():
            pytest.fail(f"the dashboard test must run in CI, but: {error}", pytrace=False)
        pytest.skip(str(error))
    with server:
        yield server


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def _has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


async def _scenario(core_a: Proc, core_b: Proc, speech: bytes) -> tuple[list[asyncio.Task[CallResult]], list[Any]]:
    """Each kind of call twice, a few scrapes apart: a labelled counter appears with its first increment, so only
    the second shows in a rate(), as it would on a pod that has been up for a while."""
    a_port, b_port = core_a.ports["audiosocket"], core_b.ports["audiosocket"]

    async def later(delay: float) -> CallResult:
        await asyncio.sleep(delay)
        return await place_call("127.0.0.1", a_port, speech, tail_s=1.0)

    ended = await asyncio.gather(later(0), later(SPACING))
    held = [
        asyncio.create_task(place_call("127.0.0.1", a_port, bytes(320), tail_s=HELD_SECONDS, time_limit=300))
        for _ in range(2)
    ]
    deadline = time.monotonic() + 20
    while core_a.metric("avr_active_calls") < 2:
        assert time.monotonic() < deadline, "the held calls did not start"
        await asyncio.sleep(0.1)
    others = []
    for _ in range(2):
        others.append(await place_call("127.0.0.1", a_port, bytes(320 * 10), tail_s=0.5, time_limit=20))  # refused
        others.append(await place_call("127.0.0.1", b_port, bytes(320 * 10), tail_s=2.0, time_limit=30))  # failed
        await asyncio.sleep(SPACING)
    return held, [*ended, *others]


def test_every_panel_query_returns_data_from_real_workers(
    prometheus: PrometheusServer, provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    echo = provider("sts")
    common = {"log_level": "warning", "log_format": "text", "rate_limit": 10000, "drain_timeout": 1}
    core_a = worker(sts_url=sts_url(echo), max_concurrent_calls=2, peer_service="127.0.0.1", **common)
    dead = f"ws://127.0.0.1:{free_port()}"
    core_b = worker(sts_url=dead, max_retries=1, connection_timeout=300, **common)
    workers = dict(zip(PODS, (core_a, core_b), strict=True))
    prometheus.set_targets([Target(f"127.0.0.1:{w.ports['http']}", NAMESPACE, pod) for pod, w in workers.items()])

    started = time.time()
    loop = asyncio.new_event_loop()
    held: list[asyncio.Task[CallResult]] = []
    try:
        # Scraped before the first call: counters and histograms start from what a real fleet shows, zero.
        _wait_scraped(prometheus, 'up{job="avr-workers"} == 1', len(PODS))
        held, results = loop.run_until_complete(_scenario(core_a, core_b, speech))
        assert results[0].non_silent_frames and results[1].non_silent_frames, "the echo provider answered"
        assert core_a.metric("avr_calls_refused_total", {"reason": "at_capacity"}) == 2
        assert core_b.metric("avr_calls_ended_total", {"reason": "provider_unavailable"}) == 2
        # Let Prometheus scrape the final state a few times (it keeps the held calls live meanwhile).
        loop.run_until_complete(_scraped(prometheus, workers))
        _check_panels(prometheus)
        _check_rules(prometheus)
        _render(prometheus, time.time() - started)
    except BaseException:
        print(prometheus.logs())
        raise
    finally:
        # The held calls end with their worker's drain (DRAIN_TIMEOUT=1), so nothing is left pending.
        with contextlib.suppress(Exception):
            core_a.stop(timeout=15)
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 15))
        loop.close()


def _wait_scraped(prometheus: PrometheusServer, promql: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(prometheus.query(promql)) < count:
        assert time.monotonic() < deadline, f"Prometheus does not scrape the workers: {prometheus.query('up')}"
        time.sleep(0.2)
    time.sleep(1.5)  # and once more, so a rate() has a zero to start from


async def _scraped(prometheus: PrometheusServer, workers: dict[str, Proc]) -> None:
    """Until Prometheus holds what the workers count now, for at least 5 scrapes of each."""
    wanted = {
        f'sum(avr_active_calls{{namespace="{NAMESPACE}"}})': 2.0,
        f'sum(avr_calls_refused_total{{namespace="{NAMESPACE}"}})': 2.0,
        f'sum(avr_calls_ended_total{{namespace="{NAMESPACE}"}})': sum(
            w.metric("avr_calls_ended_total", {"reason": r})
            for w in workers.values()
            for r in ("hangup", "disconnected", "provider_unavailable")
        ),
        f'min(count_over_time(avr_call_capacity{{namespace="{NAMESPACE}"}}[2m]))': 5.0,
    }
    deadline = time.monotonic() + 60
    while True:
        got = {q: prometheus.query(q) for q in wanted}
        values = {q: float(r[0]["value"][1]) if r else None for q, r in got.items()}
        if all(v is not None and v >= wanted[q] for q, v in values.items()):
            # A labelled counter appears with its first increment: rate() needs two of its samples.
            await asyncio.sleep(3)
            return
        assert time.monotonic() < deadline, f"Prometheus did not catch up: {values} (want {wanted})"
        await asyncio.sleep(0.5)


def _check_panels(prometheus: PrometheusServer) -> None:
    empty, nan_only, zero, checked = [], [], [], 0
    panels = _panels()
    assert set(EXEMPT) | POSITIVE <= {p["title"] for p in panels}, "a panel named here is gone"
    for panel in panels:
        positive = False
        for target in panel["targets"]:
            expr = _substitute(target["expr"])
            result = prometheus.query(expr)  # raises on a query Prometheus refuses
            if panel["title"] in EXEMPT:
                continue
            checked += 1
            if not result:
                empty.append(f"{panel['title']}: {expr}")
            elif not _has_number(result):
                nan_only.append(f"{panel['title']}: {expr}")
            positive = positive or any(float(sample["value"][1]) > 0 for sample in result)
        if panel["title"] in POSITIVE and not positive:
            zero.append(panel["title"])
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    assert not nan_only, "panel queries giving only NaN:\n" + "\n".join(nan_only)
    assert not zero, f"panels the calls should have moved: {zero}"
    assert checked >= 25
    # The variables' own queries (label_values in Grafana) list the namespace and both pods.
    namespaces = prometheus.api("label/namespace/values", **{"match[]": "avr_call_capacity"})
    assert NAMESPACE in namespaces
    pods = prometheus.api("label/pod/values", **{"match[]": f'avr_call_capacity{{namespace=~"{NAMESPACE}"}}'})
    assert sorted(pods) == sorted(PODS)


def _check_rules(prometheus: PrometheusServer) -> None:
    """Every rule of the chart's file loaded, evaluated, without error; the capacity alert pending for core-a."""
    deadline = time.monotonic() + 20
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
            break
        assert time.monotonic() < deadline, f"rules not evaluated: {rules}"
        time.sleep(0.5)
    assert {g["file"] for g in groups} == {str(RULES)}
    assert len(rules) == RULES.read_text().count("- alert: ")
    unhealthy = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy
    alerts = prometheus.api("alerts")["alerts"]
    capacity = [a for a in alerts if a["labels"]["alertname"] == "AVRWorkerAtCapacity"]
    assert [(a["labels"]["pod"], a["state"]) for a in capacity] == [("core-a", "pending")], alerts


def _render(prometheus: PrometheusServer, seconds: float) -> None:
    """With AVR_DASHBOARD_PNG=path and matplotlib, draw the panels' series over the test's last minutes."""
    path = os.environ.get("AVR_DASHBOARD_PNG")
    if not path:
        return
    from dashboard_png import render  # noqa: PLC0415 - optional, needs matplotlib

    render(prometheus, _panels(), VARIABLES, EXEMPT, Path(path), seconds=seconds)
