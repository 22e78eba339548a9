"""Reversible routing of encoder-layer forwards through a chain of block strategies.

transformers 5 records hidden states with hooks on the layer classes, so the layer modules must
stay in place: the patch sets an instance ``forward`` (kept out of the class) and deletes it on
exit. Outside a stream's chunk, and in every thread other than the one running that chunk,
the layers run their stock forward, so other users of the model are unaffected.

Tapped layers (``tap_layers``, a strategy's ``attention_taps``) get their own instance forward
beneath the block strategies' one: during a chunk it runs the layer with its attention computed
explicitly (:func:`.attention_tap.tapped_layer`) and stores the received attention in the
chunk's probe of that layer; a block strategy that computes that layer itself bypasses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..api.block_adapter import BlockAdapter
from ..api.strategy import BlockStrategy
from ..api.types import BlockCall, ChunkInfo, LayerProbe
from ..plugins.faults import Attribution, check_hidden, guarded
from .attention_tap import tapped_layer
from .overrides import Overrides, mark, refuse_nested

__all__ = ["BlockPatch"]


@dataclass
class _Active:
    states: Sequence[Any]
    chunk: ChunkInfo
    thread: int


class BlockPatch:
    """Installs ``strategies`` on ``layers`` for the duration of a ``with`` block.

    ``chunk(states, info)`` activates the chain for one chunk with one stream's states, for the
    calling thread only; chunks of streams sharing a model take turns (a lock), so no stream
    ever sees another's state.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        adapters: Sequence[BlockAdapter],
        strategies: Sequence[BlockStrategy],
        probe_layers: Sequence[int] = (),
        attribution: Attribution | None = None,
        tap_layers: Sequence[int] = (),
    ):
        if len(layers) != len(adapters):
            raise ValueError("one adapter per layer is required")
        self.layers = list(layers)
        self.adapters = list(adapters)
        self.strategies = list(strategies)
        self.probe_layers = sorted(set(probe_layers))
        self.tap_layers = sorted(set(tap_layers))
        self.attribution = attribution if attribution is not None else Attribution(None)
        self._active: _Active | None = None
        self._overrides = Overrides("block")
        self._taps = Overrides("tap")
        self._handles: list[Any] = []
        self._lock = threading.Lock()

    @property
    def installed(self) -> bool:
        return self._overrides.installed

    def __enter__(self) -> BlockPatch:
        refuse_nested(self.layers, allow=("compiled",))  # the compiled tower sits below this patch
        try:
            for i in self.probe_layers:
                hook = mark(self._make_probe(i), "probe")
                self._handles.append(self.layers[i].register_forward_pre_hook(hook, with_kwargs=True))
            for i in self.tap_layers:  # beneath the block routing, which calls it as the stock layer
                self._taps.forward(self.layers[i], self._make_tap(i, self.layers[i].forward))
            if self.strategies:
                for i, layer in enumerate(self.layers):
                    self._overrides.forward(layer, self._make_forward(i, layer.forward))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._overrides.restore()
        self._taps.restore()

    @contextmanager
    def chunk(self, states: Sequence[Any], info: ChunkInfo) -> Iterator[None]:
        """Route layer calls through the strategies with these per-stream ``states``."""
        if (self.strategies or self.probe_layers or self.tap_layers) and not (
            self.installed or self._handles or self._taps.installed
        ):
            raise RuntimeError(
                "the pipeline's encoder hooks are not installed: open streams inside "
                "`with pipeline.apply(model) as bound:` (bind() alone only checks the pipeline)"
            )
        with self._lock:
            self._active = _Active(states, info, threading.get_ident())
            try:
                yield
            finally:
                self._active = None

    def _make_probe(self, index: int) -> Callable[..., None]:
        adapter = self.adapters[index]

        def probe(_layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            active = self._active
            if active is not None and active.thread == threading.get_ident():
                hidden, rest = (args[0], args[1:]) if args else (kwargs["hidden_states"], ())
                kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                bound = adapter.bind(rest, kw)
                active.chunk.probes[index] = LayerProbe(bound.to_frames(hidden), bound, len(self.layers))

        return probe

    def _make_tap(self, index: int, stock: Callable[..., Tensor]) -> Callable[..., Tensor]:
        patch = self
        adapter = self.adapters[index]
        n_layers = len(self.layers)

        def forward(_layer: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            active = patch._active
            if active is None or active.thread != threading.get_ident():
                return stock(hidden_states, *args, **kwargs)
            bound = adapter.bind(args, kwargs)
            h = bound.to_frames(hidden_states)
            out, received = tapped_layer(bound, h)
            active.chunk.probes[index] = LayerProbe(h, bound, n_layers, received)
            return bound.from_frames(out)

        return forward

    def _make_forward(self, index: int, stock: Callable[..., Tensor]) -> Callable[..., Tensor]:
        patch = self
        adapter = self.adapters[index]
        strategies = self.strategies
        n_layers = len(self.layers)

        def forward(_layer: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            active = patch._active
            if active is None or active.thread != threading.get_ident():
                return stock(hidden_states, *args, **kwargs)
            bound = adapter.bind(args, kwargs)

            where = f"pre_vit_block layer {index}, chunk {active.chunk.index}"

            def stock_frames(h: Tensor) -> Tensor:
                return bound.to_frames(stock(bound.from_frames(h), *args, **kwargs))

            def run(j: int, h: Tensor) -> Tensor:
                if j == len(strategies):
                    return guarded(patch.attribution, "encoder layer", _layer, where, stock_frames, h)
                call = BlockCall(bound, index, n_layers, active.states[j], active.chunk)
                s = strategies[j]
                out = guarded(
                    patch.attribution,
                    "strategy",
                    s,
                    where,
                    s.block_forward,
                    call,
                    h,
                    lambda nxt: run(j + 1, nxt),
                )
                return check_hidden(patch.attribution, s, where, h, out)

            return bound.from_frames(run(0, bound.to_frames(hidden_states)))

        return forward
