"""The opt-in torch.compile path: options, a per-pipeline compiler, and the reversible tower patch.

Eager is the default and stays bit-identical. With compile on, a bound pipeline owns one
:class:`Compiler` (never a process-wide one): it compiles the encoder layers' stock forwards and
the kernels each strategy hands it through :meth:`~tokencompress.api.strategy.Strategy.compiled`.
Nothing in ``torch._dynamo.config`` is changed; every option travels with the ``torch.compile``
call. Shapes are static per stream (frames per chunk, tokens per frame, the Cacher's row count
per ratio), so ``dynamic=False`` is the default: one graph per shape, a recompile only when a
shape changes (a shorter last chunk, a second stream with another frame count).

The encoder layers stay in place as modules (transformers 5 records hidden states with hooks on
them): :class:`TowerCompile` sets an instance ``forward`` to the compiled stock forward and
deletes it on exit, entered *before* :class:`~tokencompress.patching.block_routing.BlockPatch`, whose own
instance forwards (plain Python: they read the active stream and take a lock) stay outermost and
call the compiled forward as their stock layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..api.errors import TokenCompressError
from .overrides import Overrides, mark, refuse_nested

__all__ = ["CompileOptions", "Compiler", "TowerCompile", "compile_options"]


class CompileOptions(BaseModel):
    """How to compile: passed to every ``torch.compile`` call of one bound pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    backend: str | Callable[..., Any] = "inductor"
    """A torch.compile backend name (``inductor``: C++ kernels, needs a C++ compiler on CPU;
    ``aot_eager`` / ``eager``: tracing only, for tests) or a backend callable."""
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = None
    """Inductor's mode (ignored by other backends); None is inductor's default."""
    dynamic: bool = False
    """False: one graph per shape (static per stream). True: symbolic shapes (fewer recompiles,
    slower kernels)."""
    fullgraph: bool = False
    """True makes a graph break an error instead of a split graph (for finding breaks)."""

    def describe(self) -> str:
        backend = (
            self.backend if isinstance(self.backend, str) else getattr(self.backend, "__name__", "custom")
        )
        return f"torch.compile, backend {backend}, mode {self.mode or 'default'}" + (
            ", dynamic shapes" if self.dynamic else ""
        )


def compile_options(value: CompileOptions | bool | str | None) -> CompileOptions | None:
    """``True`` → the defaults, a string → that backend, ``False``/``None`` → eager (no compile)."""
    if value is None or value is False:
        return None
    if value is True:
        return CompileOptions()
    if isinstance(value, str):
        return CompileOptions(backend=value)
    if isinstance(value, CompileOptions):
        return value
    raise TokenCompressError(
        f"compile must be True, False, a backend name or a CompileOptions, not {type(value).__name__}"
    )


class Compiler:
    """Compiles functions with one pipeline's :class:`CompileOptions`; counts the graphs it builds.

    ``compiler(fn)`` returns the compiled ``fn``, the same object for the same ``fn`` (so a
    strategy asked twice shares its kernels' compiled code). ``graphs`` counts backend
    compilations (a graph break or a recompile adds one); ``seconds`` is the time spent in the
    backend, not counting dynamo's tracing.
    """

    def __init__(self, options: CompileOptions) -> None:
        self.options = options
        self.graphs = 0
        self.seconds = 0.0
        self._compiled: dict[Any, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def _backend(self) -> Callable[..., Any]:
        import time

        import torch

        opts = self.options
        if callable(opts.backend):
            inner = opts.backend
        elif opts.backend == "inductor":
            inner = torch._TorchCompileInductorWrapper(opts.mode, None, opts.dynamic)  # type: ignore[attr-defined]
        else:
            inner = torch._dynamo.lookup_backend(opts.backend)

        def counting(gm: Any, example_inputs: Any) -> Any:
            start = time.perf_counter()
            out = inner(gm, example_inputs)
            with self._lock:
                self.graphs += 1
                self.seconds += time.perf_counter() - start
            return out

        counting.__name__ = f"tokencompress_{getattr(inner, 'compiler_name', 'backend')}"
        return counting

    @property
    def functions(self) -> list[str]:
        """Qualified names of the functions handed to this compiler, in order."""
        return [getattr(fn, "__qualname__", repr(fn)) for fn in self._compiled]

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        key = fn
        got = self._compiled.get(key)
        if got is None:
            got = self._compiled[key] = torch.compile(
                fn, backend=self._backend(), dynamic=self.options.dynamic, fullgraph=self.options.fullgraph
            )
        return got


class TowerCompile:
    """Runs ``layers`` through their compiled stock forward for a ``with`` block; restores on exit.

    Enter it before the block patch: the block patch's forwards then wrap the compiled one.
    """

    def __init__(self, layers: Sequence[Any], compiler: Compiler | None) -> None:
        self.layers = list(layers) if compiler is not None else []
        self.compiler = compiler
        self._overrides = Overrides("compiled")

    def __enter__(self) -> TowerCompile:
        if not self.layers:
            return self
        assert self.compiler is not None
        refuse_nested(self.layers)
        # One compiled function for every layer: the stock forward of the layer's class,
        # unbound, so layers of one class share one graph (their weights are graph inputs).
        for layer in self.layers:
            stock = layer.forward
            fn = getattr(stock, "__func__", None)
            if fn is None:
                self._overrides.set(layer, "forward", mark(self.compiler(stock), "compiled"))
            else:
                self._overrides.forward(layer, _calling(self.compiler(fn)))
        return self

    def __exit__(self, *exc: object) -> None:
        self._overrides.restore()


def _calling(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """A forward that calls the compiled class forward with the layer as ``self``."""

    def forward(_layer: Any, *args: Any, **kwargs: Any) -> Any:
        return compiled(_layer, *args, **kwargs)

    return forward
