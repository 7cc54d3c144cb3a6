"""``avr-runtime``: serve (the worker), provider (a reference provider), call (a sample call), demo (all three)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence

from pydantic import ValidationError

from avr_runtime import __version__


def _serve(_: argparse.Namespace) -> int:
    from avr_runtime import logs  # noqa: PLC0415 - keep `--help` fast
    from avr_runtime.config import Settings  # noqa: PLC0415
    from avr_runtime.server.worker import serve  # noqa: PLC0415

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"avr-runtime: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logs.setup(settings)
    from avr_runtime.services import tracing  # noqa: PLC0415

    tracing.setup()
    try:
        serve(settings)
    finally:
        tracing.shutdown()
    return 0


def _provider(args: argparse.Namespace) -> int:
    from avr_runtime.reference.providers import KINDS, serve  # noqa: PLC0415

    kinds = KINDS if args.kind == "all" else tuple(args.kind.split(","))
    unknown = set(kinds) - set(KINDS)
    if unknown:
        print(
            f"avr-runtime provider: unknown kind(s) {sorted(unknown)}; choose from {KINDS} or all",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(kinds, args.host, args.port, args.delay_ms, echo=args.echo)
    return 0


def _call(args: argparse.Namespace) -> int:
    from avr_runtime.client.audiosocket import place_call  # noqa: PLC0415
    from avr_runtime.client.speech import sample_speech  # noqa: PLC0415

    audio = sample_speech(args.text)
    dtmf = {int(i * 50): d for i, d in enumerate(args.dtmf or "", start=1)}
    result = asyncio.run(place_call(args.host, args.port, audio, dtmf=dtmf, tail_s=args.tail))
    gaps = sorted(result.gaps_ms())
    summary = {
        "uuid": result.uuid,
        "sent_frames": result.frames_sent,
        "sent_seconds": round(result.frames_sent * 0.02, 2),
        "received_frames": len(result.audio_frames),
        "received_non_silent_frames": result.non_silent_frames,
        "frame_gap_ms_p50": round(gaps[len(gaps) // 2], 2) if gaps else None,
        "frame_gap_ms_min": round(gaps[0], 2) if gaps else None,
        "frame_gap_ms_max": round(gaps[-1], 2) if gaps else None,
        "hangup_received": result.hangup,
        "error_codes": result.errors,
    }
    print(json.dumps(summary, indent=2))
    return 0 if result.audio_frames else 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _demo(args: argparse.Namespace) -> int:
    """Reference provider + worker as processes, one sample call through them, then a graceful stop."""
    exe = [sys.executable, "-m", "avr_runtime"]
    provider_port, as_port, http_port = free_port(), free_port(), free_port()
    env = dict(os.environ, PORT=str(as_port), HTTP_PORT=str(http_port), HOST="127.0.0.1", LOG_FORMAT="text")
    if args.mode == "sts":
        kinds = "sts"
        env["STS_URL"] = f"ws://127.0.0.1:{provider_port}"
    else:
        kinds = "all"
        base = f"http://127.0.0.1:{provider_port}"
        env |= {
            "ASR_URL": f"{base}/speech-to-text-stream",
            "LLM_URL": f"{base}/prompt-stream",
            "TTS_URL": f"{base}/text-to-speech-stream",
        }
    print(f"demo: reference provider ({kinds}) on :{provider_port}, worker AudioSocket :{as_port} HTTP :{http_port}")
    provider = subprocess.Popen([*exe, "provider", kinds, "--port", str(provider_port)])
    worker = subprocess.Popen([*exe, "serve"], env=env)
    try:
        wait_http(f"http://127.0.0.1:{provider_port}/health")
        wait_http(f"http://127.0.0.1:{http_port}/ready")
        call = argparse.Namespace(host="127.0.0.1", port=as_port, text=args.text, dtmf="", tail=args.tail)
        code = _call(call)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics") as resp:
            wanted = (
                "avr_calls_ended_total",
                "avr_frames_out_total",
                "avr_frames_late_total",
                "avr_frame_latency_seconds_count",
                "avr_turn_latency_seconds_sum",
                "avr_turn_latency_seconds_count",
            )
            for line in resp.read().decode().splitlines():
                if line.startswith(wanted):
                    print(f"metric: {line}")
        return code
    finally:
        worker.terminate()
        print(f"demo: worker exited with {worker.wait(timeout=30)} after SIGTERM")
        provider.terminate()
        provider.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="avr-runtime", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the worker (configured by environment variables)").set_defaults(fn=_serve)

    p = sub.add_parser("provider", help="run a reference provider speaking AVR's protocols")
    p.add_argument("kind", help="sts, asr, llm, tts, a comma-separated list, or all")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    # PORT: what the operator passes every provider container, as AVR's own provider images read it
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "6030")))
    p.add_argument("--delay-ms", type=float, default=0.0, help="delay each reply (simulates a slow provider)")
    p.add_argument(
        "--echo",
        choices=("c", "python"),
        default="c",
        help="sts alone: echo audio in the compiled engine (c, when built) or in Python",
    )
    p.set_defaults(fn=_provider)

    c = sub.add_parser("call", help="place a sample call over AudioSocket and print what came back")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=5001)
    c.add_argument("--text", default="Hello, I would like to check the status of my order.")
    c.add_argument("--dtmf", default="", help="digits to press, one per second")
    c.add_argument("--tail", type=float, default=1.0, help="seconds of silence after the speech")
    c.set_defaults(fn=_call)

    d = sub.add_parser("demo", help="reference provider + worker + one sample call, all local")
    d.add_argument("--mode", choices=("sts", "chain"), default="sts")
    d.add_argument("--text", default="Hello, I would like to check the status of my order.")
    d.add_argument("--tail", type=float, default=1.5)
    d.set_defaults(fn=_demo)

    args = parser.parse_args(argv)
    raise SystemExit(args.fn(args))
