"""Byte counts of open connections reported in deltas (telemetry.LiveBytes)."""

from __future__ import annotations

from shoal.ztunnel.telemetry import LiveBytes


def test_deltas_sum_to_the_final_totals():
    counts = {"req": 0, "resp": 0}
    live = LiveBytes(lambda: counts["req"], lambda: counts["resp"])
    assert live.take() == (0, 0)
    counts.update(req=100, resp=7)
    assert live.take() == (100, 7)
    assert live.take() == (0, 0)                 # nothing new: nothing reported twice
    counts.update(req=150, resp=7)
    assert live.take() == (50, 0)
    # At close the final totals (e.g. the HBONE server's counts) settle the rest.
    assert live.take(request=160, response=9) == (10, 2)
    assert (live.reported_request, live.reported_response) == (160, 9)


def test_a_smaller_total_never_reports_a_negative_delta():
    live = LiveBytes(lambda: 10, lambda: 10)
    live.take()
    assert live.take(request=4, response=10) == (0, 0)


def test_gone_is_optional():
    assert LiveBytes(lambda: 0, lambda: 0).gone is None
    assert LiveBytes(lambda: 0, lambda: 0, lambda: True).gone()
