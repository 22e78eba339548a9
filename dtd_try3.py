import torch
from tokencompress import Pipeline, Registry
from tokencompress.testing import moving_frames
reg = Registry()
for tname in ["qwen2_5_vl", "llava_onevision", "qwen3_vl", "llava_next_video"]:
    model = reg.target(tname).tiny_model()
    for thr in (-1.0, 0.5):
        pipe = Pipeline.from_dict({"target": tname, "stream": {"frames_per_chunk": 2}, "stages": {"post_vit": [{"strategy": "dtd", "threshold": thr}]}}, reg)
        with pipe.apply(model) as bound:
            s = bound.stream()
            try:
                stats = s.add_frames(moving_frames(6, seed=3))
                print(tname, thr, [c.pre_prefill for c in stats], s.cache_tokens())
            except Exception as e:
                print(tname, thr, "FAIL", str(e)[:300])
