"""rope_frequencies against transformers' own RoPE initialisation, for every supported rope type."""

from __future__ import annotations

import copy

import pytest
import torch

import lr_kernels as lk

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, Phi3Config  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding  # noqa: E402

LLAMA = {"hidden_size": 256, "num_attention_heads": 4, "max_position_embeddings": 4096}

# Enough to make long/short factor lists of the right length for head_dim 32 (16 frequencies).
_SHORT = [1.0 + 0.05 * i for i in range(16)]
_LONG = [1.0 + 0.7 * i for i in range(16)]

# (id, config class, config kwargs, seq_len)
CASES = [
    (
        "default-theta1e4-D64",
        LlamaConfig,
        {**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
        None,
    ),
    (
        "default-theta5e5-D128-explicit-head-dim",
        LlamaConfig,
        {**LLAMA, "head_dim": 128, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
        None,
    ),
    (
        "default-partial0.5",
        LlamaConfig,
        {
            **LLAMA,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
        },
        None,
    ),
    (
        "linear-f4",
        LlamaConfig,
        {**LLAMA, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}},
        None,
    ),
    (
        "linear-f2-partial0.5",
        LlamaConfig,
        {
            **LLAMA,
            "rope_parameters": {
                "rope_type": "linear",
                "factor": 2.0,
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
            },
        },
        None,
    ),
    (
        "dynamic-f2-noseq",
        LlamaConfig,
        {**LLAMA, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
        None,
    ),
    (
        "dynamic-f2-seq3x",
        LlamaConfig,
        {**LLAMA, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
        3 * 4096 + 5,
    ),
    (
        "dynamic-f4-seqshort",
        LlamaConfig,
        {**LLAMA, "rope_parameters": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 1e6}},
        1000,
    ),
    (
        "yarn-f4",
        LlamaConfig,
        {
            **LLAMA,
            "max_position_embeddings": 16384,
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "rope_theta": 1e6,
                "original_max_position_embeddings": 4096,
            },
        },
        None,
    ),
    (
        "yarn-mscale-betas-notruncate",
        LlamaConfig,
        {
            **LLAMA,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 8.0,
                "rope_theta": 1e4,
                "original_max_position_embeddings": 4096,
                "mscale": 0.707,
                "mscale_all_dim": 1.0,
                "beta_fast": 16,
                "beta_slow": 2,
                "truncate": False,
            },
        },
        None,
    ),
    (
        "yarn-attention-factor",
        LlamaConfig,
        {
            **LLAMA,
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 2.0,
                "rope_theta": 1e4,
                "attention_factor": 1.25,
                "original_max_position_embeddings": 2048,
            },
        },
        None,
    ),
    (
        "llama3-f8",
        LlamaConfig,
        {
            **LLAMA,
            "head_dim": 128,
            "max_position_embeddings": 131072,
            "rope_parameters": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_theta": 5e5,
            },
        },
        None,
    ),
    (
        "longrope-short",
        Phi3Config,
        {
            "hidden_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32768,
            "original_max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 1e4,
                "short_factor": _SHORT,
                "long_factor": _LONG,
            },
        },
        None,
    ),
    (
        "longrope-long",
        Phi3Config,
        {
            "hidden_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32768,
            "original_max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 1e4,
                "short_factor": _SHORT,
                "long_factor": _LONG,
            },
        },
        8192,
    ),
    (
        "longrope-factor-attention-factor",
        Phi3Config,
        {
            "hidden_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 16384,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 1e4,
                "factor": 4.0,
                "attention_factor": 1.1,
                "original_max_position_embeddings": 4096,
                "short_factor": _SHORT,
                "long_factor": _LONG,
            },
        },
        5000,
    ),
]


def _hf(config, seq_len):
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        cls = (
            PhiRotaryEmbedding if "partial_rotary_factor" in config.rope_parameters else LlamaRotaryEmbedding
        )
        return cls.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](copy.deepcopy(config), "cpu", seq_len=seq_len)


def _assert_same(ours: lk.RopeFrequencies, inv_freq: torch.Tensor, scaling: float) -> None:
    assert ours.inv_freq.dtype == torch.float32
    assert ours.inv_freq.device.type == "cpu"
    # Same float32 operations in the same order: bit-identical, not merely close.
    torch.testing.assert_close(ours.inv_freq, inv_freq.to(torch.float32), rtol=0, atol=0)
    assert ours.attention_scaling == pytest.approx(scaling, rel=1e-15, abs=0)


@pytest.mark.parametrize(("cls", "kwargs", "seq_len"), [pytest.param(c, k, s, id=i) for i, c, k, s in CASES])
def test_matches_transformers_config_object(cls, kwargs, seq_len):
    config = cls(**copy.deepcopy(kwargs))
    inv_freq, scaling = _hf(config, seq_len)
    ours = lk.rope_frequencies(config, seq_len=seq_len)
    _assert_same(ours, inv_freq, scaling)
    assert ours.rope_type == config.rope_parameters["rope_type"]
    assert ours.rotary_dim == 2 * inv_freq.numel()


@pytest.mark.parametrize(("cls", "kwargs", "seq_len"), [pytest.param(c, k, s, id=i) for i, c, k, s in CASES])
def test_matches_transformers_plain_config_dict(cls, kwargs, seq_len):
    config = cls(**copy.deepcopy(kwargs))
    inv_freq, scaling = _hf(config, seq_len)
    _assert_same(lk.rope_frequencies(config.to_dict(), seq_len=seq_len), inv_freq, scaling)


@pytest.mark.parametrize(("cls", "kwargs", "seq_len"), [pytest.param(c, k, s, id=i) for i, c, k, s in CASES])
def test_matches_transformers_legacy_rope_scaling_dict(cls, kwargs, seq_len):
    """Pre-v5 config.json layout: ``rope_scaling`` with ``type`` plus a top-level ``rope_theta``."""
    config = cls(**copy.deepcopy(kwargs))
    inv_freq, scaling = _hf(config, seq_len)
    legacy = copy.deepcopy(kwargs)
    params = legacy.pop("rope_parameters")
    legacy["rope_theta"] = params.pop("rope_theta")
    if "partial_rotary_factor" in params:
        legacy["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    params["type"] = params.pop("rope_type")
    legacy["rope_scaling"] = params
    _assert_same(lk.rope_frequencies(legacy, seq_len=seq_len), inv_freq, scaling)


def test_rope_params_dict_with_head_dim():
    params = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, rope_parameters=dict(params))
    inv_freq, scaling = _hf(config, None)
    _assert_same(lk.rope_frequencies(params, head_dim=128), inv_freq, scaling)


def test_head_dim_argument_overrides_config():
    config = LlamaConfig(**LLAMA, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    f = lk.rope_frequencies(config, head_dim=32)
    assert f.inv_freq.shape == (16,) and f.head_dim == 32


def test_max_position():
    dyn = LlamaConfig(**LLAMA, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    assert lk.rope_frequencies(dyn).max_position == 4095
    assert lk.rope_frequencies(dyn, seq_len=10_000).max_position == 9999
    long_kwargs = next(k for i, _, k, _ in CASES if i == "longrope-short")
    phi = Phi3Config(**copy.deepcopy(long_kwargs))
    short = lk.rope_frequencies(phi)
    assert short.max_position == 4095
    assert lk.rope_frequencies(phi, seq_len=8192).max_position is None
    short.check_positions(torch.tensor([0, 4095]))
    with pytest.raises(ValueError, match="position_ids reach 4096"):
        short.check_positions(torch.tensor([3, 4096]))
    with pytest.raises(ValueError, match="non-negative"):
        short.check_positions(torch.tensor([-1, 3]))
    default = lk.rope_frequencies(LlamaConfig(**LLAMA))
    assert default.max_position is None
    default.check_positions(torch.tensor([2**40]))


@pytest.mark.parametrize(
    ("arg", "kwargs", "match"),
    [
        pytest.param(
            {"rope_type": "ntk-by-parts", "rope_theta": 1e4},
            {"head_dim": 64},
            "rope_type must be one of",
            id="unknown-type",
        ),
        pytest.param(
            {"rope_type": "default", "rope_theta": 1e4}, {}, "head_dim is required", id="no-head-dim"
        ),
        pytest.param(
            {"rope_type": "linear", "rope_theta": 1e4},
            {"head_dim": 64},
            "needs 'factor'",
            id="linear-no-factor",
        ),
        pytest.param(
            {"rope_type": "dynamic", "factor": 2.0},
            {"head_dim": 64},
            "max_position_embeddings",
            id="dynamic-no-max-pos",
        ),
        pytest.param({"rope_type": "default"}, {"head_dim": 63}, "must be even", id="odd-head-dim"),
        pytest.param(
            {"rope_type": "default"}, {"head_dim": 0}, "head_dim must be a positive int", id="zero-head-dim"
        ),
        pytest.param(
            {"rope_type": "default"},
            {"head_dim": 64, "seq_len": -3},
            "seq_len must be a positive int",
            id="bad-seq-len",
        ),
        pytest.param(
            {"rope_type": "default", "partial_rotary_factor": 1.5},
            {"head_dim": 64},
            "partial_rotary_factor",
            id="bad-partial",
        ),
        pytest.param(
            {
                "rope_type": "longrope",
                "short_factor": [1.0] * 3,
                "long_factor": [1.0] * 3,
                "original_max_position_embeddings": 4096,
                "factor": 2.0,
            },
            {"head_dim": 64},
            "short_factor must have rotary_dim // 2 = 32",
            id="longrope-wrong-length",
        ),
        pytest.param(
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default"},
                    "sliding_attention": {"rope_type": "default"},
                }
            },
            {"head_dim": 64},
            "per-layer-type",
            id="nested-per-layer",
        ),
        pytest.param(42, {}, "config_or_rope_params must be", id="not-a-config"),
    ],
)
def test_bad_input(arg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lk.rope_frequencies(arg, **kwargs)
