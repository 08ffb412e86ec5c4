"""The patch hands a KV cache on under the name transformers uses, so no deprecation warning fires and no
cache is dropped (transformers 5.x renamed ``past_key_values`` to ``cache``)."""

import warnings

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import lr_train


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_patched_forward_and_generate_raise_no_warning(model):
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    want = model.generate(ids, max_new_tokens=4, do_sample=False)
    lr_train.patch(model, backend="torch")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(ids, labels=ids).loss.backward()
            model(ids)
            model.model(ids)
            got = model.generate(ids, max_new_tokens=4, do_sample=False)
    finally:
        lr_train.unpatch(model)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_a_given_cache_is_filled_without_use_cache(model, name):
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(2))
    lr_train.patch(model, backend="torch")
    try:
        cache = DynamicCache(config=model.config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the old name still warns inside transformers
            model(ids, **{name: cache})
    finally:
        lr_train.unpatch(model)
    assert cache.get_seq_length() == 10
