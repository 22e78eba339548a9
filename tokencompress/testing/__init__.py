"""A testing kit for plugin authors: hypothesis inputs, conformance checks and the strategy × target matrix.

Every strategy and target, built-in or plugin, owes the pipeline the same promises (token
counts as planned, original order, frames kept apart, per-stream state, the model restored).
A plugin's own test suite proves them with one call each:

* :func:`check_token_strategy` for ``post_vit`` / ``pre_prefill`` strategies,
* :func:`check_block_strategy` for ``pre_vit_block`` strategies,
* :func:`check_target` for targets (it also runs every registered strategy on the target),
* :func:`parametrize_matrix` + :func:`check_pair` for the whole matrix of an installed registry.

Needs ``hypothesis`` for :func:`visual_tokens` (the ``testing`` extra). Failures raise
``AssertionError`` explicitly (not ``assert``), because pytest does not rewrite asserts in
installed modules and ``python -O`` would strip them.
"""

from .block_strategy import check_block_strategy
from .frames import moving_frames
from .inputs import visual_tokens
from .matrix import PairResult, check_pair, matrix_pairs, parametrize_matrix, pipeline_for
from .target import check_target
from .token_strategy import check_token_strategy

__all__ = [
    "visual_tokens",
    "moving_frames",
    "check_token_strategy",
    "check_block_strategy",
    "check_target",
    "check_pair",
    "matrix_pairs",
    "parametrize_matrix",
    "pipeline_for",
    "PairResult",
]
