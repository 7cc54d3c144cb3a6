"""OpenTelemetry traces of calls: a span per call, its provider connection, each chain turn, and the delay to the
provider's first audio; ``traceparent`` goes to the providers (HTTP requests, the STS WebSocket handshake).

Configured by the standard ``OTEL_*`` variables and off unless an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): the SDK reads the sampler
(``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ``OTEL_TRACES_SAMPLER_ARG=0.1``), the service name and the
exporter's settings itself. Spans are per call and per turn, never per frame; spans are exported from the SDK's
own thread (batched), off the event loop.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.trace import Span

TRACER: Final = trace.get_tracer("avr_runtime")
_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

log = logging.getLogger(__name__)


def wanted(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "") == "none":
        return False
    return any(env.get(name) for name in _ENDPOINTS)


def setup() -> bool:
    """Install the SDK's tracer provider with an OTLP/HTTP exporter when asked to; True if tracing is on."""
    if not wanted():
        return False
    # the SDK and the exporter are loaded only when tracing is on
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "avr-runtime")})
    provider = TracerProvider(resource=resource.merge(OTELResourceDetector().detect()))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing on: sampler %s", os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"))
    return True


def shutdown() -> None:
    """Export what is left (the SDK's provider only; the default no-op one has nothing)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if flush is not None:
        flush()


def headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, for a provider request; empty when not sampled."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def trace_id(span: Span) -> str | None:
    """The id to put in the call's log lines, when the call is traced."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid and context.trace_flags.sampled else None


def epoch_ns(monotonic: float) -> int:
    """A time.monotonic() instant as the wall-clock nanoseconds spans are stamped with."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` to records logged while a sampled span is current (inside a call's task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            tid = trace_id(trace.get_current_span())
            if tid is not None:
                record.trace_id = tid
        return True
