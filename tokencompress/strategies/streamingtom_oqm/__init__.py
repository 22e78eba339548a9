"""StreamingTOM's online quantised memory (OQM; Chen et al., CVPR 2026), checked on golden outputs.

The kernels are batch-free and know nothing about transformers: :mod:`.quant` (group codes, scales,
zero points, packing), :mod:`.retrieval` (group keys, the question's representative, cosine top-k
with the budget rounded up to groups), :mod:`.attention`, :mod:`.positions` (every position rule in
one place), :mod:`.store` (a layer's groups in slabs) and :class:`OQMLayer` (one layer's memory).
:mod:`.memory` (1-D RoPE) and :mod:`.mrope` (Qwen's M-RoPE: 3-D positions by the project's scheme
for retrieved memory, delimiter and timestamp rows kept unquantised with their frame) hold a
stream's layers; :mod:`.strategy` binds them to a decoder as the ``streamingtom_oqm`` kv_cache
strategy.

How the reference's quirks are handled (labels as the tests use them):

* Q10 group keys from pre-RoPE keys, store from post-RoPE keys: both kept (the patched attention
  sees pre-RoPE projections; the memory rotates them itself).
* Q11 chunk positions ``n_init + len(window)`` (chunks share positions once the window is full):
  reproduced; ``positions: absolute`` numbers chunks by the stream.
* Q12 the window is read back from the quantised store: reproduced.
* Q13 per-channel, per-group min/max codes for keys and values, half to even, arithmetic in the
  cache's dtype: reproduced (a half-step can round differently in fp16 than in float32).
* Q14 groups aligned to storage batches, the prompt never quantised, one group = one frame: kept
  explicit (``group_size`` must divide a frame's tokens; default one frame).
* Q15 retrieved keys rotated a second time in the retrieval pass, Q16 its upper-left causal mask:
  reproduced; ``retrieval_pass: consistent`` puts the question at ``P..`` over the memory as stored.
* Q17 cosine of GQA- and token-mean query with concatenated per-KV-head mean keys, budget rounded
  up to groups, everything unscored when it fits; ties: higher score, then the lower group.
* Q18 the answer starts at ``P`` while retrieved keys keep their encode rotation: reproduced on one
  axis; under M-RoPE (no one-axis ``P``) the retrieved groups are placed by the scheme instead.
* Q19 the question runs twice: reproduced, the retrieval pass skips ``lm_head``.
* Q20 layer count and prompt length hard-coded: taken from the model and from the text prefilled
  before the first frame.
* Q21 the whole store concatenated at every question: groups are gathered by index from slabs.
* Q23 the unquantised mode is not offered.
Group keys are kept in float32 (the reference keeps them in the model dtype; identical in float32).
"""

from .attention import attend, causal_mask
from .layer import OQMLayer, OQMSettings, QuestionInfo
from .positions import QuestionPositions, answer_positions, chunk_positions, question_positions, rope
from .quant import Quantized, codes_of, dequantize, pack, quantize, unpack
from .retrieval import budget_groups, group_keys, query_repr, select_groups, similarity
from .store import GroupStore

__all__ = [
    "GroupStore",
    "OQMLayer",
    "OQMSettings",
    "QuestionInfo",
    "QuestionPositions",
    "Quantized",
    "answer_positions",
    "attend",
    "budget_groups",
    "causal_mask",
    "chunk_positions",
    "codes_of",
    "dequantize",
    "group_keys",
    "pack",
    "quantize",
    "query_repr",
    "question_positions",
    "rope",
    "select_groups",
    "similarity",
    "unpack",
]
