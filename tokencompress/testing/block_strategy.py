"""The conformance check every block strategy (``pre_vit_block``) owes the pipeline.

A block strategy runs inside the encoder's layers with per-stream state, so what can go wrong
is different from a token strategy: state leaking between streams, results depending on what
ran before, a token count the target's pooling cannot take, hooks left on the model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..api.strategy import BlockStrategy
from ..api.types import Stage, StreamConfig
from ..pipeline.config import PipelineConfig
from ..pipeline.pipeline import Pipeline
from ..plugins.registry import Registry
from .frames import moving_frames

__all__ = ["check_block_strategy"]


def _fail(message: str) -> None:
    raise AssertionError(message)


def _tokens(bound, stream, frames: np.ndarray) -> list[torch.Tensor]:
    out = []
    for i in range(0, len(frames), bound.stream_config.frames_per_chunk):
        out.append(stream.encode_only(frames[i : i + bound.stream_config.frames_per_chunk]).tokens.clone())
    return out


def check_block_strategy(
    strategy: BlockStrategy,
    model: nn.Module,
    frames: np.ndarray | None = None,
    registry: Registry | None = None,
    frames_per_chunk: int = 1,
) -> None:
    """Stream ``frames`` (default: 4 synthetic ones) through ``model`` with ``strategy`` alone and
    assert: the tower keeps its token count (unless the strategy declares ``changes_count``),
    a fresh stream repeats every output bit for bit, ``reset()`` equals a fresh stream, two
    interleaved streams equal two separate ones, and leaving ``apply()`` removes every hook."""
    frames = frames if frames is not None else moving_frames(4, seed=3)
    config = PipelineConfig(
        name=f"check-{strategy.name}",
        stream=StreamConfig(frames_per_chunk=frames_per_chunk),
        stages={Stage.PRE_VIT_BLOCK: [strategy]},
    )
    pipe = Pipeline(config, registry)
    layers = pipe.bind(model).target.vit_layers()
    with pipe.apply(model) as bound:
        first = _tokens(bound, bound.stream(), frames)
        again = _tokens(bound, bound.stream(), frames)
        for i, (a, b) in enumerate(zip(first, again, strict=True)):
            if not torch.equal(a, b):
                _fail(f"{strategy.name} chunk {i}: a fresh stream gave a different output")
        reused = bound.stream()
        _tokens(bound, reused, frames[:1])
        reused.reset()
        for i, (a, b) in enumerate(zip(first, _tokens(bound, reused, frames), strict=True)):
            if not torch.equal(a, b):
                _fail(f"{strategy.name} chunk {i}: after reset() the stream differs from a fresh one")
        one, two = bound.stream(), bound.stream()
        step = frames_per_chunk
        for i in range(0, len(frames), step):
            a = one.encode_only(frames[i : i + step]).tokens
            b = two.encode_only(frames[::-1][i : i + step]).tokens
            if not torch.equal(a, first[i // step]):
                _fail(
                    f"{strategy.name} chunk {i // step}: another stream's chunks changed this stream's output"
                )
            del b
        expected = bound.target.stage_info()[Stage.PRE_PREFILL].tokens_per_frame
        n = bound.target.token_frames(step)
        if not strategy.changes_count and any(t.shape[0] != expected * n for t in first):
            _fail(f"{strategy.name} changed the token count; declare changes_count = True if it must")
    if any("forward" in layer.__dict__ for layer in layers) or any(
        layer._forward_pre_hooks for layer in layers
    ):
        _fail("leaving apply() did not restore the encoder layers")
