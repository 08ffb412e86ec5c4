"""Varlen flash attention with RoPE fused into the kernels (Triton), plus a PyTorch backend.

Files: ``naive.py`` (plain reference, the test oracle), ``torch_impl.py`` (PyTorch backend),
``flash.py`` (Triton kernels, launchers, autograd, compile specs), ``interface.py`` (public API).
"""

from lr_kernels.attention.flash import report_cases
from lr_kernels.attention.interface import cu_seqlens_from_position_ids, varlen_attention

__all__ = ["cu_seqlens_from_position_ids", "report_cases", "varlen_attention"]
