"""Mistral: Llama's attention plus ``config.sliding_window`` (4096 in v0.1, None from v0.2 on).

The fused kernel has no window: sequences up to the window are exactly full causal attention and run
fused; a longer sequence is refused with a ValueError (set ``config.sliding_window = None`` to train
with full attention, as Mistral v0.2+ does).
"""

from torch import nn

from lr_train.patching.core import FamilySpec


def _config_window(attn: nn.Module) -> int | None:
    return getattr(attn.config, "sliding_window", None)


SPEC = FamilySpec(
    name="mistral",
    model_types=("mistral",),
    attention_class="MistralAttention",
    sliding_window=_config_window,
)
