"""One call, whichever leg carries it: provider session, playout buffer and pacer, barge-in, events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from avr_runtime.audio import pcm
from avr_runtime.audio.buffer import AnalysisWindows, PlayoutBuffer
from avr_runtime.audio.pacer import Pacer
from avr_runtime.audio.resample import Upsampler
from avr_runtime.audio.vad import EnergyVad
from avr_runtime.protocol.audiosocket import ErrorCode
from avr_runtime.server import relay
from avr_runtime.server.context import WorkerContext
from avr_runtime.server.leg import Leg
from avr_runtime.services import metrics, tracing
from avr_runtime.services.handover import MOVE, Facts, Outcome, Stay, decide
from avr_runtime.services.pool import ProviderUnavailable
from avr_runtime.services.providers.base import ProviderSession
from avr_runtime.services.providers.sts import StsSession

if TYPE_CHECKING:
    from avr_runtime.server._relay import Relay

log = logging.getLogger("avr_runtime.call")


_observe_frame = metrics.FRAME_LATENCY.observe
_out_audio = metrics.FRAMES_OUT_AUDIO.inc
_out_silence = metrics.FRAMES_OUT_SILENCE.inc


#: Every Call object still in memory, for ``avr_call_objects``: a leak shows as this outgrowing the live calls.
_objects: weakref.WeakSet[Call] = weakref.WeakSet()
metrics.CALL_OBJECTS.set_function(lambda: len(_objects))


class Call:
    def __init__(self, ctx: WorkerContext, call_uuid: str, leg: Leg, leg_name: str, source: str) -> None:
        self.ctx = ctx
        self.uuid = call_uuid
        self.leg = leg
        self.leg_name = leg_name
        self.source = source
        _objects.add(self)
        self._info = ctx.directory.take_local(call_uuid)  # else asked of the peers when the call runs
        self.metadata: dict[str, Any] = self._info.payload if self._info is not None else {}
        s = ctx.settings
        self.playout = PlayoutBuffer(
            pcm.SLIN8_FRAME_BYTES, max(1, s.playout_max_ms // pcm.FRAME_MS), s.playout_overflow
        )
        self.pacer = Pacer(
            self.playout,
            self._send,
            pcm.silence(pcm.SLIN8_FRAME_BYTES),
            margin=s.playout_margin_ms / 1000,
            grace=s.playout_grace_ms / 1000,
            max_slew=s.playout_max_slew_ms / 1000,
            on_late=metrics.FRAMES_LATE.inc,
            on_drop=metrics.FRAMES_DROPPED.labels("latency").inc,
            clock=ctx.clock,
        )
        # created now, so caller audio that arrives while the provider connects is queued, not lost
        self.session: ProviderSession | None = ctx.new_session(call_uuid, self, self._info)
        self._ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._started = time.monotonic()
        self._frames_in = 0
        self._first_audio = 0.0  # monotonic time of the provider's first audio in Python (the relay keeps its own)
        self._relay: Relay | None = None  # once the call's audio runs in the compiled data plane (relay.py)
        self._handover: Outcome | None = None  # once the handover is decided for good, and counted
        # local barge-in detection: the HTTP chain has no provider-side VAD
        self._vad: EnergyVad | None = None
        self._windows: AnalysisWindows | None = None
        self._up: Upsampler | None = None
        if s.mode == "chain":
            self._vad = EnergyVad()
            self._windows = AnalysisWindows(s.buffer_size, s.buffer_overlap)
            self._up = Upsampler() if s.audio_sample_rate == 16000 else None

    # --- from the leg ---

    def feed_audio(self, frame: bytes) -> None:
        """Caller audio, PCM16 8 kHz. Hot path."""
        self._frames_in += 1
        if self.session is not None:
            self.session.send_audio(frame)
        if self._windows is not None:
            self._analyse(frame)

    def _analyse(self, frame: bytes) -> None:
        assert self._windows is not None and self._vad is not None
        data = self._up.process(frame) if self._up is not None else frame
        for window in self._windows.feed(data):
            if self._vad.update(window) == "start" and len(self.playout):
                self.on_interruption("vad")

    def dtmf(self, digit: str) -> None:
        log.debug("call %s: DTMF %s", self.uuid, digit)
        if self.session is not None:
            self.session.send_dtmf(digit)
        self.ctx.emit(self.uuid, "dtmf_digit", {"digit": digit})

    def end(self, reason: str) -> None:
        if not self._ended.done():
            self._ended.set_result(reason)

    # --- from the provider (Listener) ---

    def on_audio(self, data: bytes) -> None:
        if not self._first_audio:
            self._first_audio = time.monotonic()
        if self._relay is not None:
            self._relay.push(data)
            return
        was_empty = not self.playout
        dropped = self.playout.push(data, time.monotonic())
        if dropped:
            metrics.DROPPED_OVERFLOW.inc(dropped)
        self.pacer.audio_arrived(was_empty)

    def on_interruption(self, source: str) -> None:
        cleared = self._relay.clear() if self._relay is not None else self.playout.clear()
        if cleared:
            metrics.DROPPED_BARGEIN.inc(cleared)
        metrics.INTERRUPTIONS.labels(source).inc()
        if self.session is not None:
            self.session.interrupt()
        self.ctx.emit(self.uuid, "interruption", {"source": source, "frames_cleared": cleared})

    def on_transcript(self, role: str, text: str) -> None:
        self.ctx.emit(self.uuid, "transcription", {"role": role, "text": text})

    def on_turn_latency(self, seconds: float) -> None:
        metrics.TURN_LATENCY.observe(seconds)

    # --- the handover to the compiled data plane ---

    def hand_over(self, leg: Leg) -> bool:
        """Offer the call to the data plane; True once there is no point in offering again: it moved, or it stays
        in Python for a reason, counted. The legs call this until then, between frames."""
        if self._handover is not None:
            return True
        outcome = decide(self._handover_facts())
        if outcome is not MOVE:
            self._settle(outcome)
            return True
        relays = self.ctx.relays
        if relays is None:  # the engine is held back (tests that hand calls over themselves)
            return False
        try:
            return relays.offer(leg, self)
        except OSError as exc:
            log.warning("call %s: not relayed: %s", self.uuid, exc, extra={"uuid": self.uuid})
            self._settle(Stay.ERROR)
            return True

    def _handover_facts(self, ended: bool = False) -> Facts:
        session = self.session
        sts = session if isinstance(session, StsSession) else None
        return Facts(
            fast_path=self.ctx.settings.fast_path,
            built=relay.AVAILABLE,
            provider="sts" if sts is not None else "chain" if session is not None else "none",
            provider_url=sts.url if sts is not None else None,
            leg=self.leg.handover_format(),
            provider_ended=session is not None and session.ended.done(),
            call_ended=ended or self._ended.done(),
        )

    def _settle(self, outcome: Outcome) -> None:
        """The handover's final outcome: counted once per call, the first one to be known."""
        if self._handover is None:
            self._handover = outcome
            metrics.count_handover(outcome)

    def relayed(self, relay: Relay) -> None:
        """The call's audio now flows in the C relay, which has taken over the pacer's grid."""
        self._relay = relay
        self._settle(MOVE)

    # --- out ---

    def _send(self, frame: bytes, waited: float | None) -> None:
        if waited is None:
            _out_silence()
        else:
            _out_audio()
            _observe_frame(waited)
        self.leg.send_frame(frame)

    # --- lifecycle ---

    async def _connect(self, session: ProviderSession) -> str | None:
        """Start the provider session unless the caller leaves first; returns an end reason on failure."""
        start: asyncio.Future[None] = asyncio.ensure_future(session.start())
        waiting: set[asyncio.Future[Any]] = {start, self._ended}
        with metrics.queued():
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        # The attempt's outcome is read, never raised here: raised in this frame, the exception's traceback (kept
        # by the task) would hold this frame and so the call, in a cycle only the collector could free.
        if not start.done():
            start.cancel()
            await asyncio.wait({start})
            if not start.cancelled():
                start.exception()  # retrieved: the caller left, whatever the attempt came to
            return None
        failure = start.exception()
        if isinstance(failure, ProviderUnavailable):
            log.warning("call %s: %s", self.uuid, failure, extra={"uuid": self.uuid})
            metrics.PROVIDER_ERRORS.labels(failure.provider, "unavailable").inc()
            return "provider_unavailable"
        if failure is not None:
            raise failure
        return None

    async def _find_info(self) -> None:
        """The call's /call metadata from the peer pod that holds it, unless the caller leaves first."""
        lookup = asyncio.ensure_future(self.ctx.directory.take(self.uuid))
        waiting: set[asyncio.Future[Any]] = {lookup, self._ended}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not lookup.done():
            lookup.cancel()
            return
        info = lookup.result()
        if info is not None:
            self._info, self.metadata = info, info.payload
            if self.session is not None:
                self.session.set_call_info(self.ctx.sts_url_for(info), info.payload)

    def _caller_limited(self) -> bool:
        """RATE_LIMIT applies per caller (the /call payload's ``from``): one PBX carries every caller's calls from
        one address, which only SOURCE_RATE_LIMIT bounds. A call with no caller id is not limited per caller."""
        caller = self.metadata.get("from")
        if caller is None or caller == "":
            return False
        if self.ctx.caller_limiter.hit(str(caller)) is None:
            return False
        metrics.RATE_LIMITED.labels("caller").inc()
        metrics.CALLS_REFUSED.labels("rate_limited").inc()
        log.warning("call %s from caller %s refused: rate_limited", self.uuid, caller, extra={"uuid": self.uuid})
        return True

    async def _refuse(self, reason: str, code: ErrorCode) -> str:
        """End a call that never started (no provider session was opened)."""
        await self._release(reason, code)
        return reason

    async def run(self) -> str:
        """Connect the provider, play until the call ends; returns the reason it ended."""
        attributes = {"avr.call.uuid": self.uuid, "avr.call.leg": self.leg_name, "avr.mode": self.ctx.settings.mode}
        with tracing.TRACER.start_as_current_span("call", attributes=attributes) as span:
            reason = await self._run()
            span.set_attribute("avr.call.end_reason", reason)
            if first := self._first_audio:  # a span of its own: from the call's start to the provider's first audio
                tracing.TRACER.start_span("first_audio", start_time=tracing.epoch_ns(self._started)).end(
                    end_time=tracing.epoch_ns(first)
                )
            return reason

    async def _run(self) -> str:
        ctx = self.ctx
        ctx.add_call(self)
        self.pacer.start()  # the caller hears silence while its metadata is looked up
        if self._info is None and ctx.directory.has_peers:
            await self._find_info()
        if self._caller_limited():
            return await self._refuse("rate_limited", ErrorCode.RATE_LIMITED)
        metrics.CALLS_STARTED.labels(self.leg_name).inc()
        log.info(
            "call started",
            extra={"uuid": self.uuid, "leg": self.leg_name, "source": self.source, "mode": ctx.settings.mode},
        )
        ctx.emit(self.uuid, "call_started", {"leg": self.leg_name, **self.metadata})
        reason = "cancelled"
        failed = False
        try:
            session = self.session
            if session is None:
                reason = await self._ended
            elif (failure := await self._connect(session)) is not None:
                reason, failed = failure, True
            else:
                await asyncio.wait({self._ended, session.ended}, return_when=asyncio.FIRST_COMPLETED)
                if self._ended.done():
                    reason = self._ended.result()
                else:
                    reason = session.ended.result()
                    failed = reason != "provider_closed"  # a provider that says goodbye is not a failure
        finally:
            await self._release(reason, ErrorCode.PROVIDER_UNAVAILABLE if failed else None)
            metrics.CALLS_ENDED.labels(reason.split(":")[0]).inc()
            duration = time.monotonic() - self._started
            metrics.CALL_DURATION.observe(duration)
            if self._first_audio:
                metrics.FIRST_AUDIO.observe(self._first_audio - self._started)
            log.info(
                "call ended",
                extra={
                    "uuid": self.uuid,
                    "leg": self.leg_name,
                    "reason": reason,
                    "duration_s": round(duration, 3),
                    "frames_in": self._frames_in,
                },
            )
            ctx.emit(self.uuid, "call_ended", {"reason": reason, "duration": round(duration, 3)})
        return reason

    async def _release(self, reason: str, error_code: int | None) -> None:
        """The one place a call lets go of what it holds, whichever way it ended (refused, hung up, failed,
        cancelled): the pacer, the engine's relay (what it counted is kept), the provider session, the caller's
        connection and the call's entry in the worker; an undecided handover is settled. Then the references
        between the parts are broken (the session's listener is this call, the relay's protocols are its
        connections), so reference counting frees them at once: left to the cyclic collector, every ended call's
        objects would reach its oldest generation, whose full collections stall the event loop in proportion to
        it."""
        self.pacer.close()
        plane = self._relay
        if plane is not None:
            plane.stop()
            self._first_audio = self._first_audio or plane.first_audio
            self._frames_in += plane.frames_in
        session = self.session
        try:
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.close()
        finally:
            self.leg.hang_up(reason, error_code)
            self.ctx.remove_call(self)
            if self._handover is None:
                self._settle(decide(self._handover_facts(ended=True)))
            if session is not None:
                session.release()
            self.session = None
            self._relay = None
            self.leg.released()
