"""The fast-path choice, driven by a fake clock: each path advances it by a set cost, so what is
checked is the choice logic (faster wins, ties keep stock, one calibration per key), never wall time."""

from __future__ import annotations

import pytest
import torch

from tokencompress.kernels.calibration import Calibration, machine_key


class FakeClock:
    """``now()`` reads the fake time; a path's call advances it by that path's cost."""

    def __init__(self) -> None:
        self.t = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t

    def path(self, name: str, costs: list[float], calls: list[str]):
        """A path that costs ``costs[i]`` seconds on its ``i``-th call (the last cost repeats)."""

        def run() -> str:
            self.t += costs[min(sum(c == name for c in calls), len(costs) - 1)]
            calls.append(name)
            return name

        return run


def paths(clock: FakeClock, stock: list[float], fast: list[float]):
    calls: list[str] = []
    return clock.path("stock", stock, calls), clock.path("fast", fast, calls), calls


def test_the_faster_path_is_picked_and_its_own_result_returned():
    clock = FakeClock()
    cal = Calibration(clock, calls=3, margin=0.08)
    stock, fast, calls = paths(clock, [9.0, 1.0], [7.0, 0.8])  # first calls (packing) are slow
    assert cal.run("k", stock, fast) == "fast"
    # warm-up, then rounds of both, the first in each round alternating
    assert calls == ["stock", "fast"] + ["stock", "fast", "fast", "stock", "stock", "fast"]
    choice = cal.choices["k"]
    assert choice.fast and (choice.stock_s, choice.fast_s, choice.ratio) == pytest.approx((1.0, 0.8, 0.8))
    assert choice.cost_s == pytest.approx(9.0 + 7.0 + 3 * (1.0 + 0.8))


def test_a_slower_fast_path_keeps_stock():
    clock = FakeClock()
    cal = Calibration(clock)
    stock, fast, _ = paths(clock, [1.0], [1.07])
    assert cal.run("k", stock, fast) == "stock"
    assert not cal.choices["k"].fast


def test_a_tie_within_the_margin_keeps_stock_and_a_clear_win_does_not():
    clock = FakeClock()
    cal = Calibration(clock, margin=0.05)
    stock, fast, _ = paths(clock, [1.0], [0.96])  # 4 % faster: inside the 5 % margin
    assert cal.run("tie", stock, fast) == "stock"
    stock, fast, _ = paths(clock, [1.0], [0.94])
    assert cal.run("win", stock, fast) == "fast"
    default = Calibration(clock)  # 8 %: a 6 % gain is within what load noise fakes
    assert default.margin == 0.08 and default.run("k", stock, fast) == "stock"
    stock, fast, _ = paths(clock, [1.0], [0.8])
    assert default.run("avx512-like", stock, fast) == "fast"


def test_rounds_are_compared_pairwise_so_one_disturbed_round_does_not_decide():
    clock = FakeClock()
    cal = Calibration(clock, calls=3)
    # another process slows the second round's fast call (3.0) and the third round's stock call
    # (5.0): per-round ratios 0.8, 3.0, 0.16, median 0.8
    stock, fast, _ = paths(clock, [1.0, 1.0, 1.0, 5.0], [0.8, 0.8, 3.0, 0.8])
    assert cal.run("k", stock, fast) == "fast"
    assert cal.choices["k"].ratio == pytest.approx(0.8)
    # a load that slows both calls of a round alike leaves the ratio alone
    stock, fast, _ = paths(clock, [1.0, 1.0, 4.0, 1.0], [1.1, 1.1, 4.4, 1.1])
    assert cal.run("slower", stock, fast) == "stock"
    assert cal.choices["slower"].ratio == pytest.approx(1.1)


def test_one_calibration_per_key_then_only_the_chosen_path_runs():
    clock = FakeClock()
    cal = Calibration(clock, calls=2)
    stock, fast, calls = paths(clock, [1.0], [0.5])
    cal.run("a", stock, fast)
    n, reads = len(calls), clock.reads
    assert [cal.run("a", stock, fast) for _ in range(3)] == ["fast"] * 3
    assert calls[n:] == ["fast"] * 3 and clock.reads == reads  # no timing once chosen
    slow_stock, slow_fast, other = paths(clock, [1.0], [2.0])
    assert cal.run("b", slow_stock, slow_fast) == "stock"  # another key calibrates on its own
    assert set(cal.choices) == {"a", "b"} and cal.choices["a"].fast and not cal.choices["b"].fast


def test_two_owners_never_share_choices():
    clock = FakeClock()
    one, two = Calibration(clock), Calibration(clock)
    stock, fast, _ = paths(clock, [1.0], [0.5])
    one.run("k", stock, fast)
    assert "k" in one.choices and two.choices == {}


def test_keys_carry_the_isa_and_the_thread_count():
    key = machine_key("layer", (1, 729, 1152), torch.float32)
    assert key == ("layer", (1, 729, 1152), torch.float32, torch.backends.cpu.get_cpu_capability(),
                   torch.get_num_threads())  # fmt: skip


@pytest.mark.parametrize("calls, margin", [(0, 0.03), (3, 1.0), (3, -0.1)])
def test_bad_settings_are_refused(calls, margin):
    with pytest.raises(ValueError):
        Calibration(calls=calls, margin=margin)


def test_nothing_is_timed_or_cached_under_a_flop_counter():
    """The bench counts FLOPs in an untimed pass first: there the stock path runs, uncounted extra
    calls never inflate the figures, and the choice is left to the first timed call."""
    from torch.utils.flop_counter import FlopCounterMode

    clock = FakeClock()
    cal = Calibration(clock)
    stock, fast, calls = paths(clock, [1.0], [0.5])
    with FlopCounterMode(display=False):
        assert cal.run("k", stock, fast) == "stock"
    assert calls == ["stock"] and cal.choices == {} and clock.reads == 0
    assert cal.run("k", stock, fast) == "fast" and cal.choices["k"].fast
