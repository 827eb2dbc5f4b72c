"""When the watchdog calls a consumer stalled (coxswain.runtime.liveness)."""

from __future__ import annotations

from coxswain.runtime.liveness import Liveness


def test_a_loop_that_comes_round_is_never_stalled() -> None:
    liveness = Liveness(stall_after=30.0, last_round=0.0)
    for now in range(0, 300, 5):
        liveness.came_round(float(now), rebalancing=False)
        assert liveness.stalled(now + 4.9) is None


def test_a_loop_that_does_not_come_round_is_stalled_after_the_stall_time() -> None:
    liveness = Liveness(stall_after=30.0, last_round=100.0)
    assert liveness.stalled(129.9) is None
    assert liveness.stalled(130.0) == "loop"
    assert liveness.explain("loop", 131.0) == "its loop has not come round for 31.0s"


def test_a_rebalance_that_never_ends_is_a_stall_even_while_the_loop_comes_round() -> None:
    liveness = Liveness(stall_after=30.0, last_round=0.0)
    for now in range(0, 30):
        liveness.came_round(float(now), rebalancing=True)
        assert liveness.stalled(float(now)) is None
    liveness.came_round(30.0, rebalancing=True)
    assert liveness.stalled(30.0) == "rebalance"
    assert liveness.explain("rebalance", 31.0) == "its group has not finished a rebalance for 31.0s"


def test_a_rebalance_that_ends_resets_its_clock() -> None:
    liveness = Liveness(stall_after=30.0, last_round=0.0)
    liveness.came_round(0.0, rebalancing=True)
    liveness.came_round(20.0, rebalancing=False)
    liveness.came_round(25.0, rebalancing=True)
    liveness.came_round(50.0, rebalancing=True)
    assert liveness.stalled(50.0) is None, "25 s of this rebalance, not 50 since the first"
    assert liveness.stalled(55.0) == "rebalance"


def test_during_an_outage_waiting_is_expected_and_the_clocks_count_from_its_end() -> None:
    liveness = Liveness(stall_after=30.0, last_round=0.0)
    liveness.came_round(0.0, rebalancing=True)
    for now in range(1, 100):
        liveness.outage(float(now))  # the watchdog sees Kafka away and the loop stuck on it
    assert liveness.stalled(100.0) is None
    assert liveness.stalled(128.0) is None
    assert liveness.stalled(129.0) == "loop"


def test_a_watchdog_that_looks_on_time_sees_no_pause() -> None:
    liveness = Liveness(stall_after=5.0, last_round=0.0)
    for now in range(0, 60):
        assert liveness.paused_for(now + 0.3, every=1.0) is None


def test_a_process_that_did_not_run_for_the_stall_time_was_paused_not_stuck() -> None:
    liveness = Liveness(stall_after=5.0, last_round=0.0)
    assert liveness.paused_for(1.0, every=1.0) is None
    assert liveness.paused_for(6.9, every=1.0) is None, "late by less than the stall time"
    assert liveness.paused_for(37.0, every=1.0) == 30.1
    assert liveness.stalled(37.0) is None, "the loop could not run either: its clock starts again"
    assert liveness.stalled(42.0) == "loop"
