"""STC-Cacher's ``fast_reference: auto``: reference layers follow the calibration's choice, made with
a fake clock (each path advances it by a set cost), never wall time; ``true``/``false`` skip it."""

from __future__ import annotations

import pytest
import torch

from tests.strategies.test_stc_cacher import plain, run_stream, tiny, video  # noqa: F401 - tiny is a fixture
from tokencompress.kernels.calibration import Calibration
from tokencompress.strategies.stc_cacher import StcCacher
from tokencompress.targets.llava import siglip_block


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def costed(monkeypatch, clock: FakeClock, stock: float, rows: float) -> list[str]:
    """Stock Q/K/V advance ``clock`` by ``stock`` s, the row kernels' fused Q/K/V by ``rows`` s;
    returns the log of which ran."""
    calls: list[str] = []
    stock_qkv = siglip_block.SiglipBlockAdapter.qkv
    rows_qkv = siglip_block._PackedSiglipBlockAdapter.qkv

    def timed(name, cost, fn):
        def qkv(self, x):
            clock.t += cost
            calls.append(name)
            return fn(self, x)

        return qkv

    monkeypatch.setattr(siglip_block._PackedSiglipBlockAdapter, "qkv", timed("rows", rows, rows_qkv))
    monkeypatch.setattr(siglip_block.SiglipBlockAdapter, "qkv", timed("stock", stock, stock_qkv))
    return calls


def test_auto_is_the_default() -> None:
    assert StcCacher().params.fast_reference == "auto"


@pytest.mark.parametrize("rows_cost, picks_rows", [(0.5, True), (1.5, False), (0.97, False)])
@torch.no_grad()
def test_auto_reference_layers_take_the_calibrated_path(tiny, monkeypatch, rows_cost, picks_rows) -> None:  # noqa: F811
    clock = FakeClock()
    calls = costed(monkeypatch, clock, stock=1.0, rows=rows_cost)
    cacher = StcCacher(update_token_ratio=0.5, cache_interval=2)
    cacher.calibration = Calibration(clock, calls=2, margin=0.05)
    frames = video(0, 4)
    results = run_stream(tiny, cacher, frames, 1)
    # one key: both layers have one shape; the two-layer tower's first reference chunk calibrates once
    ((key, choice),) = cacher.calibration.choices.items()
    assert key[1] == (1, 16, 32) and key[2] == torch.float32
    assert choice.fast is picks_rows
    # warm-up and two timed rounds (the first to go alternates), on layer 0 only
    assert calls[:6] == ["stock", "rows", "stock", "rows", "rows", "stock"]
    after = calls[6:]
    # the rest of the reference chunks' layers: 1 (chunk 0, layer 1) + 2 (chunk 2) on the choice
    assert after == ["rows" if picks_rows else "stock"] * 3
    ref_chunks = [hidden for is_ref, hidden in results if is_ref]
    for hidden, c in zip(ref_chunks, (0, 2), strict=True):
        expected = plain(tiny, frames[c : c + 1])
        if picks_rows:
            torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=0)
        else:
            assert torch.equal(hidden, expected)  # stock reference layers are the plain tower


@pytest.mark.parametrize("fast", [True, False])
@torch.no_grad()
def test_true_and_false_skip_the_calibration(tiny, monkeypatch, fast) -> None:  # noqa: F811
    def no_clock() -> float:
        raise AssertionError("forced fast_reference must not time anything")

    calls = costed(monkeypatch, FakeClock(), stock=1.0, rows=0.5)
    cacher = StcCacher(update_token_ratio=0.5, cache_interval=2, fast_reference=fast)
    cacher.calibration = Calibration(no_clock)
    run_stream(tiny, cacher, video(1, 3), 1)
    assert cacher.calibration.choices == {}
    assert calls == ["rows" if fast else "stock"] * 4  # 2 reference chunks x 2 layers


@torch.no_grad()
def test_each_instance_calibrates_for_itself(tiny, monkeypatch) -> None:  # noqa: F811
    clock = FakeClock()
    costed(monkeypatch, clock, stock=1.0, rows=0.5)
    one, two = StcCacher(), StcCacher()
    one.calibration, two.calibration = Calibration(clock), Calibration(clock)
    run_stream(tiny, one, video(2, 1), 1)
    assert len(one.calibration.choices) == 1 and two.calibration.choices == {}
    run_stream(tiny, one, video(3, 1), 1)  # a second stream on the same instance reuses the choice
    assert len(one.calibration.choices) == 1
