"""ReKV's per-layer video KV memory (Di et al., ICLR 2025), reimplemented and checked on golden outputs.

The kernels work on pre-RoPE, batch-free tensors and know nothing about transformers: a
:class:`ReKVLayer` per decoder layer holds the sinks, the sliding window, the frame blocks (in
a host-memory :class:`BlockStore`) and, during an answer, the answer cache. The ``kv_cache``
stage (``tokencompress.strategies.rekv.strategy``) feeds it the projections of a real decoder.

How the reference's quirks are handled (Q1-Q15 are the labels the tests and the README use):

* Q1 dot product, not cosine: reproduced; ``similarity="cosine"`` is the separate option.
* Q2 representatives repeated per query head in fp16: stored per KV head in float32 and scored
  as ``sum_g <sum_{h in g} q̄_h, r_g>`` (same math; near-ties only could flip).
* Q3 sinks counted twice while they load: reproduced by default (the fixtures' ``quirk_rows``
  need it); ``count_sinks_once=True`` attends each sink once (changes only those rows).
* Q4 question while the sinks are partly loaded (the reference crashes): the first ``n_init``
  tokens are sinks from the start and frames sit on a fixed grid, so it just works.
* Q5 fp16 scores before the sinks fill: float32 everywhere.
* Q6 ``torch.topk`` tie order: higher score first, then the lower block id (stable sort).
* Q7 answer cache re-rotated and renumbered from 0 at every step: reproduced (positions only
  shift once the answer cache is trimmed, i.e. after ``n_local`` answer tokens).
* Q8 the question runs twice (bare for retrieval, then in the prompt): reproduced by the stage.
* Q9 frames offloaded while still in the window: reproduced (store and window overlap).
* Q10 one pinned tensor per block: blocks live in slabs of ``slab_blocks``.
* Q11 the window is not attended at question time: reproduced.
* Q12 batch 1, default RoPE only: asserted by the stage at build time.
* Q13 external ids unsorted and unchecked: sorted, deduplicated, range- and count-checked.
* Q14 a question before any frame: answered over the sinks alone.
* Q15 memory reported as layer 0 × layers: the real sum (``device_bytes``, ``BlockStore.nbytes``).
"""

from ...kernels.rope import cos_sin, inv_freq, rotate, rotate_by
from .attention import window_sink_attention
from .layer import QuestionInfo, ReKVLayer, ReKVSettings
from .retrieval import Selection, block_scores, expand_representatives, representatives, select_blocks
from .store import BlockStore

__all__ = [
    "BlockStore",
    "ReKVLayer",
    "QuestionInfo",
    "ReKVSettings",
    "Selection",
    "block_scores",
    "cos_sin",
    "expand_representatives",
    "inv_freq",
    "representatives",
    "rotate",
    "rotate_by",
    "select_blocks",
    "window_sink_attention",
]
