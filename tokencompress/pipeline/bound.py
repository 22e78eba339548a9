"""A pipeline bound to one model: the vision side of every stream that runs through it.

:class:`BoundPipeline` holds the target, the strategies placed per stage and the block patch;
it holds no stream data. A stream calls :meth:`BoundPipeline.encode_chunk` with its own
strategy states and position (the seam in :mod:`tokencompress.stream.seam`) and keeps what
comes back; any number of streams may share one bound pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor, nn

from ..api.decode_policy import DecodePolicy, DecodeStep
from ..api.kv_cache_strategy import KVMemory
from ..api.prefill_segment import check_prefill_grouping
from ..api.strategy import BlockStrategy, Strategy, TokenStrategy
from ..api.target import Target
from ..api.tokens import VisualTokens
from ..api.types import ChunkInfo, Stage, StreamConfig
from ..patching.block_routing import BlockPatch
from ..patching.compiling import CompileOptions, Compiler, TowerCompile
from ..patching.decode_keys import DecodeKeys
from ..patching.decoder_attention import GroupedKVAttention
from ..patching.decoder_linears import packed_decoder_linears
from ..patching.in_decoder import InDecoderPatch
from ..patching.kv_routing import KVPatch
from ..plugins.events import StageEvent
from ..plugins.faults import Attribution, check_tokens, guarded
from ..plugins.registry import Registry
from ..stream.seam import ChunkRecorder, EncodedChunk, StreamPosition
from ..stream.timing import now
from .config import PipelineConfig
from .decoder_placement import in_decoder_build
from .kv_placement import kv_build, policy_build, position_fixes
from .placement import TOKEN_PATH, Placement

if TYPE_CHECKING:
    from ..stream.stream import Stream

__all__ = ["BoundPipeline"]


class BoundPipeline:
    """A pipeline bound to one model through its target; opens any number of independent streams."""

    def __init__(
        self,
        config: PipelineConfig,
        registry: Registry,
        target: Target,
        placement: Placement,
        compile: CompileOptions | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.target = target
        self.compiler = Compiler(compile) if compile is not None else None
        """This pipeline's own torch.compile (None: eager); see :mod:`tokencompress.patching.compiling`."""
        run_as = self._compiled_twins()
        self.by_stage = {stage: [run_as(s) for s in steps] for stage, steps in placement.by_stage.items()}
        self.notes = list(placement.notes)
        self.steps: list[Strategy] = [
            run_as(s) for stage in TOKEN_PATH for s in self.config.strategies(stage)
        ]
        """Every token-path strategy in YAML order: the order of a stream's ``states``."""
        block = [s for s in self.by_stage[Stage.PRE_VIT_BLOCK] if isinstance(s, BlockStrategy)]
        n_layers = len(target.vit_layers())
        probes = sorted({i for s in self.steps for i in s.probe_layers(n_layers)})
        taps = sorted({i for s in self.steps for i in s.attention_taps(n_layers)})
        layers = target.vit_layers() if (block or probes or taps) else []
        self.attribution = Attribution(registry)
        self.patch = BlockPatch(
            layers, [target.block_adapter(layer) for layer in layers], block, probes, self.attribution, taps
        )
        check_prefill_grouping(
            config.stream,
            target,
            [s for s in config.strategies(Stage.KV_CACHE) if not isinstance(s, DecodePolicy)],
        )
        self.tower = TowerCompile(target.vit_layers(), self.compiler)
        self.kv, self.kv_build = kv_build(self.config, target, self.tokens_per_frame())
        """The kv_cache strategy and what it was built for (both None without one)."""
        self.decode_policy, self.policy_build = policy_build(
            self.config, target, self.tokens_per_frame(), self.kv
        )
        """The kv_cache decode policy (``dycoke_kv``) and what it was built for (both None without one)."""
        self.position_fixes = position_fixes(registry, target)
        """kv_cache steps that bound positions on this target (a refused stream names them)."""
        per, _ = self.tokens_per_frame()
        frames = target.token_frames(config.stream.frames_per_chunk)
        self.in_decoder, stack = in_decoder_build(
            config, target, None if per is None else per * frames, self.kv, self.decode_policy
        )
        """The in_decoder strategy (None without one); its hooks: ``in_decoder_patch``."""
        self.in_decoder_patch = InDecoderPatch(
            stack, self.in_decoder, getattr(target, "language_model", None)
        )
        self.decoder_attention = GroupedKVAttention(getattr(target, "language_model", None))
        self.kv_patch = KVPatch(
            self.kv_build.layout if self.kv_build else None, self.kv is not None and self._kv_attends()
        )
        self.decode_keys = DecodeKeys(
            getattr(target, "language_model", None),
            self.policy_build.layout.attention if self.policy_build else (),
            self.decode_policy is not None,
        )
        self._index = {id(s): i for i, s in enumerate(self.steps)}
        self._observed = self.registry.has_observers()
        self._next_stream_id = 0

    @property
    def model(self) -> nn.Module:
        return self.target.model

    @property
    def stream_config(self) -> StreamConfig:
        return self.config.stream

    @contextmanager
    def patched(self) -> Iterator[BoundPipeline]:
        """Install this pipeline's encoder and decoder patches for the ``with`` block (``apply`` uses
        it): the compiled tower (with ``compile``; the block patch wraps the compiled layers), the
        decoder's grouped-K/V attention (:mod:`.decoder_attention`, bit-identical), with
        ``stream.decoder_kernels: packed`` its prepacked linears (:mod:`.decoder_kernels`), and an
        in_decoder strategy's layer hooks (:mod:`..patching.in_decoder`)."""
        decoder = getattr(self.target, "language_model", None)
        packed = self.config.stream.decoder_kernels == "packed"
        with (
            self.tower,
            self.patch,
            self.kv_patch,
            self.decoder_attention,
            self.decode_keys,  # after decoder_attention: it wraps the implementation that one selects
            packed_decoder_linears(decoder, packed),
            self.in_decoder_patch,
        ):
            yield self

    @property
    def decoder_patched(self) -> bool:
        """Whether every decoder patch this pipeline needs is installed now (inside ``apply()``): a
        memory's own attention routing, the in_decoder layer hooks, the decode policy's routing."""
        return all(p.installed for p in (self.kv_patch, self.in_decoder_patch, self.decode_keys) if p.active)

    def decoder_calls(self) -> AbstractContextManager[None]:
        """A stream's decoder work (prefills, answers) runs inside this: the decoder attention reads
        grouped K/V in place for the calling thread only (:mod:`..patching.decoder_attention`)."""
        return self.decoder_attention.calls()

    def in_decoder_scope(self, state: Any) -> AbstractContextManager[None]:
        """A stream's decoder calls run inside this: the in_decoder hooks act on them with the stream's
        own bookkeeping ``state`` (:class:`~tokencompress.api.in_decoder.InDecoderState`; None: no-op)."""
        return self.in_decoder_patch.scope(state)

    def decode_answering(self, step: DecodeStep, visual: Tensor) -> AbstractContextManager[None]:
        """The calling thread's decode steps on a stock cache go through ``step`` (a decode policy)."""
        return self.decode_keys.answering(step, visual)

    def _compiled_twins(self) -> Callable[[Strategy], Strategy]:
        """Each strategy as this pipeline runs it: itself, or with compile on its compiled twin
        (one per strategy, so the stage lists and ``steps`` hold the same objects)."""
        if self.compiler is None:
            return lambda s: s
        twins: dict[int, Strategy] = {}
        compiler = self.compiler
        return lambda s: twins.setdefault(id(s), s.compiled(compiler))

    def _kv_attends(self) -> bool:
        """Whether the kv_cache strategy computes attention itself (so the decoder must be patched)."""
        assert self.kv is not None and self.kv_build is not None
        probe = self.kv.new_memory(self.target, self.kv_build)
        return isinstance(probe, KVMemory) and probe.custom_attention

    def tokens_per_frame(self) -> tuple[int | None, str | None]:
        """Tokens one token frame leaves pre_prefill with, or (None, the strategy that makes it vary).

        A count change before pre_prefill (only possible where the target is not count-locked)
        reaches the LLM through the target's own pooling, so it is treated as data-dependent; so is a
        pre_prefill strategy whose chunk total is not frames x its one-frame count (VidCom² with
        several frames per chunk spreads its budget by frame uniqueness).
        """
        infos = self.target.stage_info()
        for stage in (Stage.PRE_VIT_BLOCK, Stage.POST_VIT):
            for s in self.by_stage[stage]:
                if s.changes_count:
                    return None, s.name
        n: int = infos[Stage.PRE_PREFILL].tokens_per_frame
        f = self.target.token_frames(self.config.stream.frames_per_chunk)
        for s in self.by_stage[Stage.PRE_PREFILL]:
            one, chunk = s.planned_count(n, 1), s.planned_count(n, f)
            if one is None or chunk != f * one:  # per-frame counts follow the data
                return None, s.name
            n = one
        return n, None

    def stream(self, **kwargs: Any) -> Stream:
        """A new stream with its own strategy states and KV cache (see :class:`~tokencompress.stream.stream.Stream`)."""
        from ..stream.stream import Stream

        self._next_stream_id += 1
        return Stream(self, stream_id=self._next_stream_id, **kwargs)

    def new_states(self) -> list[Any]:
        return [s.new_state() for s in self.steps]

    def copy_states(self, states: Sequence[Any]) -> list[Any]:
        """Copies of a stream's ``states`` that later chunks cannot change (each strategy's
        :meth:`~tokencompress.api.strategy.Strategy.copy_state`), for the chunk transaction."""
        return [s.copy_state(state) for s, state in zip(self.steps, states, strict=True)]

    def block_states(self, states: Sequence[Any]) -> list[Any]:
        """The entries of a stream's ``states`` that belong to the installed block strategies."""
        return [states[self._index[id(s)]] for s in self.patch.strategies]

    def planned_tokens(self, stage: Stage, frames: int) -> int | None:
        """Tokens a chunk of ``frames`` video frames leaves ``stage`` with, if known from shapes alone."""
        frames = self.target.token_frames(frames)
        n = self.target.stage_info()[stage].tokens_per_frame * frames
        for s in self.by_stage[stage]:
            per = n // frames if frames else 0
            nxt = s.planned_count(per, frames)
            if nxt is None:
                return None
            n = nxt
        return n

    # ------------------------------------------------------------ the seam
    def encode_chunk(
        self,
        states: Sequence[Any],
        frames: Sequence[np.ndarray],
        position: StreamPosition,
        stream_id: int = 0,
    ) -> EncodedChunk:
        """Run the vision path of one chunk of ``frames`` (``[H, W, 3]`` uint8 each) with one
        stream's strategy ``states``; returns the tokens for the LLM, the chunk and its timing."""
        target = self.target
        recorder = ChunkRecorder(target.device)
        pixels = target.preprocess(list(frames))  # before any strategy state moves
        recorder.preprocessed()
        chunk = ChunkInfo(
            index=position.chunk,
            first_frame=position.frame,
            num_frames=len(frames),
            to_prefill_grid=target.prefill_grid_map(),
            first_token_frame=position.token_frame,
        )
        at = f"chunk {chunk.index}"
        for strategy, state in zip(self.steps, states, strict=True):
            guarded(
                self.attribution,
                "strategy",
                strategy,
                f"start_chunk, {at}",
                strategy.start_chunk,
                state,
                chunk,
            )

        def runner(stage: Stage, tokens: VisualTokens) -> VisualTokens:
            if stage == Stage.POST_VIT:  # the tower just finished
                seconds = recorder.tower_finished()
                self.observe(Stage.PRE_VIT_BLOCK, chunk, tokens.count, tokens.count, seconds, stream_id)
            return self.run_stage(stage, tokens, states, chunk, recorder, stream_id)

        with self.patch.chunk(self.block_states(states), chunk):
            tokens = guarded(
                self.attribution,
                "target",
                target,
                f"encode, {at}",
                target.encode,
                pixels,
                chunk,
                runner,
            )
        return EncodedChunk(tokens, chunk, recorder.finish())

    def run_stage(
        self,
        stage: Stage,
        tokens: VisualTokens,
        states: Sequence[Any],
        chunk: ChunkInfo,
        recorder: ChunkRecorder,
        stream_id: int = 0,
    ) -> VisualTokens:
        """Apply ``stage``'s strategies in run order, recording counts and time."""
        start = now(self.target.device)
        n_in = tokens.count
        where = f"{stage.value}, chunk {chunk.index}"
        for strategy in self.by_stage[stage]:
            assert isinstance(strategy, TokenStrategy)
            state = states[self._index[id(strategy)]]
            before = tokens
            out = guarded(
                self.attribution,
                "strategy",
                strategy,
                where,
                strategy.apply,
                before,
                state,
                chunk,
            )
            tokens = check_tokens(self.attribution, strategy, where, before, out)
        seconds = now(self.target.device) - start
        recorder.stage(stage, n_in, tokens.count, seconds)
        self.observe(stage, chunk, n_in, tokens.count, seconds, stream_id)
        return tokens

    def observe(
        self, stage: Stage, chunk: ChunkInfo, n_in: int, n_out: int, seconds: float, stream_id: int
    ) -> None:
        """Tell observer plugins a stage finished (skipped entirely when none is installed)."""
        if self._observed:
            self.registry.notify(StageEvent(stream_id, chunk.index, stage, n_in, n_out, seconds))
