"""Prometheus metrics of the worker. Names are part of the interface (dashboards, the HPA): keep them stable.

Label children that are touched per frame are bound once here: ``labels()`` (a lock and a dict lookup) costs several
times what the ``inc()`` itself does.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from avr_runtime.services.handover import Outcome, Stay

_MS_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
_REQ_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ACTIVE_CALLS: Final = Gauge("avr_active_calls", "Calls in progress on this worker (AudioSocket and stream legs).")
QUEUE_LENGTH: Final = Gauge(
    "avr_queue_length",
    "Calls in the system on this worker: in progress (those still connecting to their provider included) plus "
    "any waiting to be admitted. The autoscaling signal: its average per pod against avr_call_capacity.",
)
CALL_CAPACITY: Final = Gauge("avr_call_capacity", "Calls this worker accepts at once (MAX_CONCURRENT_CALLS).")
CALL_UTILIZATION: Final = Gauge("avr_call_utilization", "avr_queue_length / avr_call_capacity, 0 to 1.")
PROVIDER_WAITING: Final = Gauge(
    "avr_provider_waiting",
    "Work waiting for a provider: calls whose provider connection is being made, plus provider requests waiting "
    "for a free pooled connection. High while avr_queue_length is low means slow providers, not too few pods.",
)
CALL_OBJECTS: Final = Gauge(
    "avr_call_objects",
    "Call objects in the worker's memory, ended ones not yet freed included. Above avr_active_calls for long "
    "means ended calls are not being freed.",
)
READY: Final = Gauge("avr_ready", "1 when the worker accepts new calls (not draining, below capacity).")
DRAINING: Final = Gauge("avr_draining", "1 after SIGTERM while live calls finish.")
CALLS_STARTED: Final = Counter("avr_calls_started_total", "Calls accepted.", ["leg"])
CALLS_ENDED: Final = Counter("avr_calls_ended_total", "Calls ended, by reason.", ["reason"])
CALLS_REFUSED: Final = Counter("avr_calls_refused_total", "New calls refused, by reason.", ["reason"])
PROTOCOL_ERRORS: Final = Counter(
    "avr_protocol_errors_total", "Malformed input that ended a call, by reason.", ["leg", "reason"]
)
CALLS_RELAYED: Final = Counter(
    "avr_calls_relayed_total", "Calls whose audio moved to the compiled data plane once in their steady state."
)
HANDOVERS: Final = Counter(
    "avr_data_plane_handovers_total",
    "Calls decided for the compiled data plane: moved, or stayed in Python (result python) with the reason.",
    ["reason", "result"],
)
WIDEBAND_CALLS: Final = Counter(
    "avr_audiosocket_wideband_calls_total", "AudioSocket calls above 8 kHz, by format.", ["format"]
)
RATE_LIMITED: Final = Counter(
    "avr_rate_limited_total",
    "Requests or calls refused by the rate limiter, by scope: http or call (per source address), caller.",
    ["scope"],
)
POD_COST_UPDATES: Final = Counter(
    "avr_pod_deletion_cost_updates_total", "Updates of the pod's deletion cost, by outcome (ok, failed).", ["outcome"]
)
UNAUTHORIZED: Final = Counter(
    "avr_http_unauthorized_total", "HTTP API requests refused for a missing or wrong API_TOKEN."
)
PEER_LOOKUPS: Final = Counter(
    "avr_peer_lookups_total",
    "Calls that arrived without their /call metadata and asked the other pods, by result "
    "(found, none, timeout, error).",
    ["result"],
)


class LoopHistogram(Collector):
    """A histogram observed from the event loop thread only, for per-frame use.

    Hot path: ``Histogram.observe`` takes a lock and scans the buckets linearly, 50 times a second per call; this is
    a bisect and two additions, with no lock since only one thread observes. Exposed through prometheus-client's
    collector interface, so the metric reads exactly like a ``Histogram``.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    @property
    def bounds(self) -> list[float]:
        return list(self._bounds)

    def merge(self, counts: Sequence[int], total: float) -> None:
        """Add observations counted elsewhere (the C relay) with the same bounds: one count per bucket + the sum."""
        if len(counts) != len(self._counts):
            raise ValueError(f"expected {len(self._counts)} bucket counts, got {len(counts)}")
        for i, count in enumerate(counts):
            self._counts[i] += count
        self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, total = [], 0
        for bound, count in zip([*self._bounds, math.inf], self._counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self._sum)


FRAME_LATENCY: Final = LoopHistogram(
    "avr_frame_latency_seconds",
    "Time provider audio waits in the worker before it is sent to the caller (playout and pacing).",
    buckets=_MS_BUCKETS,
)
CALL_DURATION: Final = Histogram(
    "avr_call_duration_seconds",
    "Calls from their start to their end, whatever ended them (refused calls are not counted).",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
FIRST_AUDIO: Final = Histogram(
    "avr_first_audio_seconds",
    "From a call's start to the provider's first audio: the greeting's delay as the caller hears it, the provider "
    "connection included. Calls whose provider never spoke are not counted.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
TURN_LATENCY: Final = Histogram(
    "avr_turn_latency_seconds",
    "From the end of the caller's utterance (transcript received) to the first audio of the reply.",
    buckets=_REQ_BUCKETS,
)
PROVIDER_DURATION: Final = Histogram(
    "avr_provider_request_duration_seconds",
    "Provider requests and connections, until the response completed.",
    ["provider"],
    buckets=_REQ_BUCKETS,
)
PROVIDER_ERRORS: Final = Counter("avr_provider_errors_total", "Provider failures, by kind.", ["provider", "reason"])
PROVIDER_RETRIES: Final = Counter("avr_provider_retries_total", "Provider attempts retried.", ["provider"])
CACHE_HITS: Final = Counter("avr_cache_hits_total", "TTS cache hits.")
CACHE_MISSES: Final = Counter("avr_cache_misses_total", "TTS cache misses.")
CACHE_ENTRIES: Final = Gauge("avr_cache_entries", "TTS phrases cached.")
FRAMES_DROPPED: Final = Counter(
    "avr_frames_dropped_total",
    "Audio frames discarded, by reason (overflow, bargein, backpressure).",
    ["reason"],
)
FRAMES_LATE: Final = Counter(
    "avr_frames_late_total", "Outbound frames sent more than 5 ms after their slot (the event loop was late)."
)
FRAMES_OUT: Final = Counter("avr_frames_out_total", "Outbound frames sent to callers.", ["kind"])
INTERRUPTIONS: Final = Counter("avr_interruptions_total", "Barge-ins: queued agent audio discarded.", ["source"])
WEBHOOKS: Final = Counter("avr_webhook_deliveries_total", "Webhook deliveries, by outcome.", ["outcome"])

# Children of the usual label values exist from the start, at 0: a rate() over a series that appears only at its
# first increment never counts that increment (dashboards and alerts would miss a pod's first refusal).
for _reason in ("at_capacity", "rate_limited", "draining"):
    CALLS_REFUSED.labels(_reason)
for _reason in ("hangup", "disconnected", "provider_closed", "provider_failed", "provider_unavailable"):
    CALLS_ENDED.labels(_reason)
for _scope in ("http", "call", "caller"):
    RATE_LIMITED.labels(_scope)
HANDOVERS.labels(result="moved", reason="none")
for _stay in Stay:
    HANDOVERS.labels(result="python", reason=_stay.value)

FRAMES_OUT_AUDIO: Final = FRAMES_OUT.labels("audio")
FRAMES_OUT_SILENCE: Final = FRAMES_OUT.labels("silence")
DROPPED_OVERFLOW: Final = FRAMES_DROPPED.labels("overflow")
DROPPED_BARGEIN: Final = FRAMES_DROPPED.labels("bargein")
DROPPED_BACKPRESSURE: Final = FRAMES_DROPPED.labels("backpressure")


def count_handover(outcome: Outcome) -> None:
    """One call's handover decision, once it is final (see services/handover.py)."""
    if isinstance(outcome, Stay):
        HANDOVERS.labels(result="python", reason=outcome.value).inc()
    else:
        HANDOVERS.labels(result="moved", reason="none").inc()


@contextmanager
def queued() -> Iterator[None]:
    """Count a unit of work in ``avr_provider_waiting`` while it waits for a provider."""
    PROVIDER_WAITING.inc()
    try:
        yield
    finally:
        PROVIDER_WAITING.dec()
