"""PtsClock: the one rule that keeps output pts increasing (sources across reconnects and loops, the runtime
across fillers)."""

from __future__ import annotations

from fractions import Fraction

from streamer.frames import PtsClock, frame_step

TB = Fraction(1, 90_000)


def test_pts_pass_through_until_they_step_back_then_continue_at_the_source_spacing():
    clock = PtsClock()
    # An encoder restarted mid-stream (no reconnect): its clock starts again at 0.
    got = [clock.map(pts, TB) for pts in (0, 3000, 6000, 9000, 0, 3000, 6000)]
    assert got == [0, 3000, 6000, 9000, 12000, 15000, 18000]


def test_restart_re_anchors_even_when_the_new_segment_is_ahead():
    clock = PtsClock()
    assert [clock.map(p, TB) for p in (0, 3000)] == [0, 3000]
    clock.restart()  # a reconnect whose stream clock is far ahead
    assert [clock.map(p, TB) for p in (900_000, 903_000)] == [6000, 9000]


def test_missing_pts_and_other_time_bases():
    clock = PtsClock(fps=30)
    assert clock.map(None, Fraction(1, 30)) is None  # nothing to continue from yet
    assert clock.map(0, Fraction(1, 30)) == 0 and clock.time_base == Fraction(1, 30)
    assert clock.map(3000, TB) == 1  # converted to the first time base
    assert clock.map(None, TB) == 2  # a filler: one frame at 30 fps later
    assert frame_step(30, TB) == 3000 and frame_step(1000, Fraction(1, 30)) == 1
