"""One specification, both pacers: every event script of tests/vectors/pacer is replayed on a virtual clock
through audio/pacer.py's Pacer and through the compiled relay's pacer core, and each must play exactly what the
script expects, when it expects it (the README there says how a script reads)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pacer_spec import Replay, Script, replay_c, replay_python, scripts

from avr_runtime.server import _relay  # built by the test command (scripts/bootstrap installs gcc)

SCRIPTS = scripts()


def replay_with(implementation: str, script: Script) -> Replay:
    return replay_python(script) if implementation == "python" else replay_c(script, _relay.Pacer)


def rounded(played: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Times to the microsecond: the scripts' precision; the two pacers agree to the bit."""
    return [(round(t, 6), what) for t, what in played]


@pytest.mark.parametrize("implementation", ["python", "c"])
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_the_pacer_plays_what_the_script_expects(script: Script, implementation: str) -> None:
    got = replay_with(implementation, script)
    assert rounded(got.played) == script.expect, script.why
    assert got.counts == script.counts, script.why


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_the_two_pacers_agree_to_the_bit(script: Script) -> None:
    """Both do the same arithmetic in the same order on IEEE doubles, so not even the last bit of a time differs."""
    python, c = replay_python(script), replay_c(script, _relay.Pacer)
    assert python.played == c.played


def test_the_scripts_cover_every_rule() -> None:
    """The rules of audio/pacer.py's docstring, each exercised by at least one script (by name)."""
    names = {s.name for s in SCRIPTS}
    for rule in (
        "idle_cadence",
        "phase_lock",
        "late_within_grace",
        "stall_does_not_use_up_grace",
        "stall_restarts_grid",
        "late_slot_keeps_distance",
        "steady_backlog_drained",
        "steady_backlog_cut",
        "faster_than_real_time_never_cut",
        "backlog_left_by_stall",
        "backlog_behind_silence_for_late_audio",
        "short_last_frame",
        "tail_of_reply",
    ):
        assert rule in names


def test_no_two_frames_closer_than_period_less_max_slew() -> None:
    """The one bound Asterisk needs, whatever the script: never a burst."""
    for script in SCRIPTS:
        s: dict[str, Any] = script.settings
        times = [t for t, _ in script.expect]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= s["period"] - s["max_slew"] - 1e-9, script.name
