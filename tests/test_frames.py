"""PtsClock: the one rule that keeps output pts increasing (sources across reconnects and loops, the runtime
across fillers, the encoder sink); Pacer: the one rule that holds frames to their pts on the wall clock."""

from __future__ import annotations

from fractions import Fraction

import pytest

from streamer.media.frames import Pacer, PtsClock, frame_step

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


def test_clock_in_a_fixed_time_base():
    clock = PtsClock(fps=25, time_base=TB)  # an encoder's stream: 1/90000 whatever the frames carry
    assert clock.map(40, Fraction(1, 1000)) == 3600
    assert clock.map(40, Fraction(1, 1000)) == 7200  # a repeated pts: one frame at 25 fps later


def test_pacer_holds_frames_to_their_pts_from_the_first():
    pacer = Pacer()
    assert pacer.delay(10.0, now=100.0) == 0.0  # the first frame anchors
    assert pacer.delay(10.5, now=100.1) == pytest.approx(0.4)
    assert pacer.delay(11.0, now=101.2) == 0.0  # 0.2 s late: played at once, the anchor stays
    assert pacer.delay(11.5, now=101.3) == pytest.approx(0.2)
    assert pacer.delay(None, now=101.3) == 0.0 and pacer.reanchored == 0


def test_pacer_re_anchors_after_a_stall_and_after_a_jump():
    pacer = Pacer()
    pacer.delay(0.0, now=0.0)
    # A 3 s stall: the frame due at 1.0 comes at 4.0. Without re-anchoring the next 3 s of frames would all
    # be "late" and rush out at once; re-anchored, play goes on at the source's rate from here.
    assert pacer.delay(1.0, now=4.0) == 0.0 and pacer.reanchored == 1
    assert pacer.delay(1.1, now=4.0) == pytest.approx(0.1)
    # The pts jump 10 s ahead (a gap in a recording): not waited out.
    assert pacer.delay(11.1, now=4.1) == 0.0 and pacer.reanchored == 2
    assert pacer.delay(11.2, now=4.1) == pytest.approx(0.1)
    pacer.reset()
    assert pacer.delay(0.0, now=5.0) == 0.0  # a new segment anchors anew
    assert pacer.delay(0.5, now=5.0) == pytest.approx(0.5)
