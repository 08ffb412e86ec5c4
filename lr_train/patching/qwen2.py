"""Qwen2 / Qwen2.5: Llama's attention with q/k/v biases (carried by the nn.Linear projections) and an
optional per-layer sliding window (``use_sliding_window`` + ``max_window_layers``), refused past its
length like Mistral's.
"""

from lr_train.patching.core import FamilySpec, layer_sliding_window

SPEC = FamilySpec(
    name="qwen2",
    model_types=("qwen2",),
    attention_class="Qwen2Attention",
    sliding_window=layer_sliding_window,
)
