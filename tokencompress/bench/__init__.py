"""Compare a pipeline with the uncompressed baseline in one run, on the same frames and model.

Everything is reported as a ratio pipeline / baseline (docs/design.md §9). The package holds one concept
per module: :mod:`.running` (interleaved runs of both variants), :mod:`.measuring` (FLOPs through
the target's vision seam, peak memory, KV size, load), :mod:`.results` (the result types),
:mod:`.reporting` (the table and its notes), :mod:`.plot` (the chart) and :mod:`.sampling` (the
frames). FLOPs are deterministic and are what tests may assert on; wall time never is.
"""

from .plot import write_plot
from .reporting import format_table
from .results import RATIOS, BenchResult, VariantResult
from .running import DEFAULT_QUESTION, run_benchmark
from .sampling import sample_frames

__all__ = [
    "BenchResult",
    "DEFAULT_QUESTION",
    "RATIOS",
    "VariantResult",
    "format_table",
    "run_benchmark",
    "sample_frames",
    "write_plot",
]
