"""Segment selection and position index transformation (LongRecipe's data side, C++/CUDA in csrc/).

``naive`` holds the plain-Python reference with bit-identical results.
"""

from lr_kernels.positions.ops import (
    extension_available,
    pose_positions,
    randpos_positions,
    remap_positions,
    select_segments,
    split_segments,
)

__all__ = [
    "extension_available",
    "pose_positions",
    "randpos_positions",
    "remap_positions",
    "select_segments",
    "split_segments",
]
