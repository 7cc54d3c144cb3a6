"""The per-frame latency histogram exposes exactly what prometheus-client's Histogram would for the same values."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from avr_runtime.services.metrics import LoopHistogram


def exposition(registry: CollectorRegistry, name: str) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if line.startswith(name)]


def test_same_exposition_as_a_prometheus_histogram() -> None:
    buckets = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = LoopHistogram("t_latency_seconds", "doc", buckets, registry=ours_registry)
    theirs = Histogram("t_latency_seconds", "doc", buckets=buckets, registry=theirs_registry)
    rng = random.Random(5)
    values = [rng.expovariate(200) for _ in range(5000)] + [0.001, 0.005, 0.05, 0.0, 3.0]  # bounds are inclusive
    for v in values:
        ours.observe(v)
        theirs.observe(v)
    mine = exposition(ours_registry, "t_latency_seconds")
    reference = [line for line in exposition(theirs_registry, "t_latency_seconds") if "_created" not in line]
    assert [line for line in mine if "_sum" not in line] == [line for line in reference if "_sum" not in line]
    my_sum = float(next(line for line in mine if "_sum" in line).split()[-1])
    assert abs(my_sum - sum(values)) < 1e-9
    assert 't_latency_seconds_bucket{le="+Inf"} 5005.0' in mine
