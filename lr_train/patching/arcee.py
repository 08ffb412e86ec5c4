"""Arcee (AFM): Llama's attention and head with a ReLU^2 MLP and YaRN rope scaling."""

from lr_train.patching.core import FamilySpec

SPEC = FamilySpec(name="arcee", model_types=("arcee",), attention_class="ArceeAttention")
