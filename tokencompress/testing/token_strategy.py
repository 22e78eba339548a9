"""The conformance check every token strategy (``post_vit`` / ``pre_prefill``) owes the pipeline.

Every token strategy, built-in or plugin, owes the pipeline the same promises (docs/design.md §3, §8):
the count it announced, the original order, rows copied rather than altered when pruning,
frames kept apart, bookkeeping (``assign``/``sizes``) that matches the rows, and the same
answer on the same input. Shipping the check here lets a plugin's own test suite prove that
with one call instead of re-deriving the invariants. Needs ``hypothesis`` (a test extra).

Failures raise ``AssertionError`` explicitly (not ``assert``), because pytest does not
rewrite asserts in installed modules and ``python -O`` would strip them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..api.scoring_pruner import ScoringPruner
from ..api.strategy import TokenStrategy
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo

__all__ = ["check_token_strategy"]


def _fail(message: str) -> None:
    raise AssertionError(message)


def _chunk_inputs(tokens: VisualTokens | Sequence[VisualTokens], chunks: int) -> list[VisualTokens]:
    """The chunk sequence to feed: the given ones, or ``tokens`` repeated on consecutive frames."""
    if not isinstance(tokens, VisualTokens):
        return list(tokens)
    step = tokens.num_frames
    return [
        replace(tokens, frame=tokens.frame + c * step, first_frame=tokens.first_frame + c * step)
        for c in range(chunks)
    ]


def _run(
    strategy: TokenStrategy,
    inputs: list[VisualTokens],
    infos: Sequence[ChunkInfo] | None = None,
    dropped_plans: bool = False,
) -> list[VisualTokens]:
    state = strategy.new_state()
    out = []
    for i, tok in enumerate(inputs):
        chunk = infos[i] if infos is not None else ChunkInfo(i, tok.first_frame, tok.num_frames)
        if dropped_plans and isinstance(strategy, ScoringPruner) and tok.count:
            strategy.plan(tok, state, chunk)  # planned and dropped: must leave the state as it was
        out.append(strategy.apply(tok, state, chunk))
    return out


def _same(a: VisualTokens, b: VisualTokens) -> bool:
    fields = ("tokens", "frame", "pos", "source", "sizes", "assign")
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in fields) and a.grid == b.grid


def _check_chunk(
    strategy: TokenStrategy, inp: VisualTokens, out: VisualTokens, where: str, copies_rows: bool
) -> None:
    counts = inp.counts()
    if counts.numel() and bool((counts == counts[0]).all()):
        planned = strategy.planned_count(int(counts[0]), inp.num_frames)
        if planned is not None and out.count != planned:
            _fail(f"{where}: {out.count} tokens out, planned_count promised {planned}")
    if (out.num_frames, out.first_frame, out.grid) != (inp.num_frames, inp.first_frame, inp.grid):
        _fail(f"{where}: the chunk's frames or grid changed")
    n = out.count
    if not all(t.shape[0] == n for t in (out.frame, out.pos, out.source, out.sizes)):
        _fail(f"{where}: aligned fields have different lengths than the {n} token rows")
    if n > 1 and not bool((out.source[1:] > out.source[:-1]).all()):
        _fail(f"{where}: output sources are not strictly increasing (original order lost)")
    # every output row must stand on a row of the input: its representative's source
    row = torch.searchsorted(inp.source, out.source).clamp(max=max(inp.count - 1, 0))
    if n and not torch.equal(inp.source[row], out.source):
        _fail(f"{where}: output sources {out.source.tolist()} are not rows of the input")
    if n and not torch.equal(out.frame, inp.frame[row]):
        _fail(f"{where}: a row moved to another frame (frames must never mix)")
    if n and not torch.equal(out.pos, inp.pos[row]):
        _fail(f"{where}: a row's grid position no longer matches its source")
    if copies_rows and bool((out.sizes == 1).all()) and n and not torch.equal(out.tokens, inp.tokens[row]):
        _fail(f"{where}: pruned rows are not bit-identical copies of the input rows at their source")
    if out.assign.shape != inp.assign.shape:
        _fail(f"{where}: assign covers {out.assign.numel()} original tokens, expected {inp.assign.numel()}")
    if n and not torch.equal(out.assign[out.source], torch.arange(n, device=out.assign.device)):
        _fail(f"{where}: assign does not map each kept source to its own output row")
    if bool(((out.assign < -1) | (out.assign >= n)).any()):
        _fail(f"{where}: assign points outside the {n} output rows")
    if bool(((inp.assign < 0) & (out.assign >= 0)).any()):
        _fail(f"{where}: a token dropped before this strategy came back")
    members = torch.bincount(out.assign[out.assign >= 0], minlength=n)
    if not torch.equal(members.to(out.sizes.dtype), out.sizes):
        _fail(f"{where}: sizes {out.sizes.tolist()} disagree with assign's member counts {members.tolist()}")


def check_token_strategy(
    strategy: TokenStrategy,
    tokens: VisualTokens | Sequence[VisualTokens],
    chunks: int = 2,
    copies_rows: bool = True,
    chunk_infos: Sequence[ChunkInfo] | None = None,
) -> list[VisualTokens]:
    """Run ``strategy`` over a stream, assert the docs/design.md §8 invariants, return every output.

    ``tokens`` is either a sequence of chunks, fed in order, or one chunk repeated ``chunks``
    times on consecutive frames. Each run uses a fresh state and ``ChunkInfo`` indices
    0, 1, ...; the whole stream runs twice to prove determinism (for a ``ScoringPruner`` the first run
    also plans every chunk once and drops the plan, which must not change the state, so a chunk that
    fails after its plan leaves the stream as it was). Set ``copies_rows=False``
    only for a strategy that legitimately rewrites features without merging them.
    ``chunk_infos`` gives each chunk's :class:`ChunkInfo` (with the layer probes a target filled
    in) where the strategy reads more than the tokens; by default bare infos are built.
    """
    inputs = _chunk_inputs(tokens, chunks)
    if chunk_infos is not None and len(chunk_infos) != len(inputs):
        raise ValueError(f"{len(chunk_infos)} chunk_infos for {len(inputs)} chunks")
    first = _run(strategy, inputs, chunk_infos, dropped_plans=True)
    for i, (inp, out) in enumerate(zip(inputs, first, strict=True)):
        _check_chunk(strategy, inp, out, f"{strategy.name} chunk {i}", copies_rows)
    second = _run(strategy, inputs, chunk_infos)
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if not _same(a, b):
            _fail(
                f"{strategy.name} chunk {i}: a second run from a fresh state gave a different output "
                "(a ScoringPruner's plan() must not change the state; commit() does)"
            )
    return first
