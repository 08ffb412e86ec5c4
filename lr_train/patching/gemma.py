"""Gemma (1): Llama's attention (rotate-half RoPE, ``head_dim`` from the config, usually 256) inside a
stack that scales embeddings and uses ``1 + weight`` RMSNorm; neither touches the attention or the loss.
"""

from lr_train.patching.core import FamilySpec

SPEC = FamilySpec(name="gemma", model_types=("gemma",), attention_class="GemmaAttention")
