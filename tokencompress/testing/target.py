"""The conformance check a target plugin owes the framework, run on the tiny model it provides.

A target is checked the way users meet it: it recognises its own model, the token layout it
promises at each stage is what its vision path produces, a stream grows the cache by the kept
tokens and rewinds it after a question, and every registered strategy either runs on it with
all of the matrix's checks or is refused at bind time naming both sides.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..api.target import Target
from ..api.types import Stage
from ..pipeline.pipeline import Pipeline
from ..plugins.registry import Registry
from .frames import moving_frames
from .matrix import PairResult, check_pair

__all__ = ["check_target"]


def _fail(message: str) -> None:
    raise AssertionError(message)


def check_target(
    target_cls: type[Target], registry: Registry | None = None, strategies: Iterable[str] | None = None
) -> list[PairResult]:
    """Check ``target_cls`` (registered in ``registry``) on its ``tiny_model()``; returns the matrix
    result of every registered strategy (or of ``strategies``) on it, refusals included, so a
    caller can compare them with the pairs it claims to support."""
    registry = registry if registry is not None else Registry()
    if (
        registry.targets.get(target_cls.name) is None
        or registry.targets[target_cls.name].cls is not target_cls
    ):
        _fail(
            f"target '{target_cls.name}' is not registered in this registry; pass Registry(plugins=[module])"
        )
    model = target_cls.tiny_model()
    if not target_cls.matches(model):
        _fail(f"{target_cls.__name__}.matches() refuses its own tiny_model()")
    frames = moving_frames(4, seed=11)
    pipe = Pipeline.from_dict(
        {"target": target_cls.name, "stream": {"frames_per_chunk": 2}, "stages": {}}, registry
    )
    with pipe.apply(model) as bound:
        target = bound.target
        infos = target.stage_info()
        fmt = target.chat_format()
        if "{question}" not in fmt.question:
            _fail("chat_format().question has no {question} placeholder")
        stream = bound.stream()
        stats = stream.add_frames(frames)
        for c in stats:
            n = target.token_frames(c.frames)
            for stage, (n_in, n_out) in ((Stage.POST_VIT, c.post_vit), (Stage.PRE_PREFILL, c.pre_prefill)):
                if n_in != n_out or n_in != infos[stage].tokens_per_frame * n:
                    _fail(
                        f"chunk {c.chunk} {stage.value}: {n_in}→{n_out} tokens with no strategy, stage_info "
                        f"promises {infos[stage].tokens_per_frame} × {n} token frames"
                    )
        if stream.llm.visual_tokens != sum(c.pre_prefill[1] for c in stats):
            _fail("the cache did not receive every visual token")
        length, position = stream.llm.length, stream.llm.next_position
        answer = stream.ask(torch.tensor([5, 6, 7]), max_new_tokens=2)
        if (stream.llm.length, stream.llm.next_position) != (length, position):
            _fail("ask() left the question or the answer in the cache")
        if not bool(torch.isfinite(answer.first_logits).all()):
            _fail("the answer's logits are not finite")
    names = sorted(registry.strategies) if strategies is None else list(strategies)
    return [check_pair(registry, s, target_cls.name, model=model) for s in names]
