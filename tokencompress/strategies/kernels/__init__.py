"""Similarity kernels shared by the per-frame pruners (STC-Pruner, VidCom² and its streaming baseline).

Both methods score tokens the same way: pick the lowest-variance channels, L2-normalise the rows,
and measure a multi-bandwidth Gaussian similarity to a few centres (the frame mean, the chunk mean,
a stream memory of chunk means). Written once here, with the float32 operation order the reference
fixtures pin, so the two strategies cannot drift apart.
"""

from .channels import channel_variance, gather_columns, select_channels
from .chunk_means import ChunkMeans, ChunkMeansStep
from .similarity import (
    EPS,
    bandwidth_divisors,
    frame_and_centre_similarity,
    frame_similarity,
    gaussian_similarity,
    unit,
)

__all__ = [
    "EPS",
    "bandwidth_divisors",
    "ChunkMeans",
    "ChunkMeansStep",
    "channel_variance",
    "frame_and_centre_similarity",
    "frame_similarity",
    "gather_columns",
    "gaussian_similarity",
    "select_channels",
    "unit",
]
