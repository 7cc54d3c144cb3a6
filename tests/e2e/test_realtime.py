"""REALTIME_PRIORITY: the worker's event loop on SCHED_FIFO, and a worker without the privilege carrying on."""

from __future__ import annotations

import os
import subprocess
import sys

from procs import Proc, ProviderFactory, WorkerFactory, sts_url

from avr_runtime.client.audiosocket import place_call

PROBE = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
NO_SYS_NICE = ("setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice")


def privileged() -> bool:
    """Whether a process started by this one may use SCHED_FIFO (CAP_SYS_NICE)."""
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, check=False).returncode == 0


async def assert_carries_a_call(w: Proc, speech: bytes) -> None:
    result = await place_call("127.0.0.1", w.ports["audiosocket"], speech, tail_s=0.3)
    assert result.hangup and result.errors == []
    assert len(result.audio_frames) >= 0.9 * (len(speech) // 320)
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1


async def test_the_event_loop_runs_on_sched_fifo(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), realtime_priority=10, log_format="text")
    if privileged():
        assert os.sched_getscheduler(w.popen.pid) == os.SCHED_FIFO
        assert os.sched_getparam(w.popen.pid).sched_priority == 10
        assert "event loop on SCHED_FIFO, priority 10" in w.log
    else:  # an unprivileged run of the tests: the other branch of the same setting
        assert os.sched_getscheduler(w.popen.pid) == os.SCHED_OTHER
        assert "needs CAP_SYS_NICE" in w.log
    await assert_carries_a_call(w, speech)


async def test_without_cap_sys_nice_the_worker_says_so_and_serves(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    prefix = NO_SYS_NICE if privileged() else ()  # as root, drop the capability; otherwise it is not there
    w = worker(sts_url=sts_url(sts), realtime_priority=10, log_format="text", prefix=prefix)
    assert os.sched_getscheduler(w.popen.pid) == os.SCHED_OTHER
    assert "REALTIME_PRIORITY=10 needs CAP_SYS_NICE: running on the normal scheduler" in w.log
    await assert_carries_a_call(w, speech)


async def test_the_default_is_the_normal_scheduler(worker: WorkerFactory) -> None:
    w = worker()
    assert os.sched_getscheduler(w.popen.pid) == os.SCHED_OTHER
    assert "SCHED_FIFO" not in w.log and "CAP_SYS_NICE" not in w.log
