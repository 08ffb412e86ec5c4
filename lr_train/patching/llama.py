"""Llama (1, 2, 3.x incl. llama3 rope scaling): the reference layout every other family starts from."""

from lr_train.patching.core import FamilySpec

SPEC = FamilySpec(name="llama", model_types=("llama",), attention_class="LlamaAttention")
