"""Loading models for the recipe, and the RoPE-base rule for context extension."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TINY_PRESETS: dict[str, dict[str, Any]] = {
    # A model small enough to train on a laptop CPU in minutes; used by the tests.
    "tiny-llama": dict(
        model_type="llama",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
}

# Twice as deep: the base model of `demo` and `compare` (lr_train.retriever). Trained the same way for
# 2,500-3,000 steps, this one answers the single-needle task at its 256-token window and the 2-layer one
# did not (measured: 1.00 vs 0.61); neither learns the multi-needle tasks well in that budget.
TINY_PRESETS["tiny-llama-4l"] = dict(TINY_PRESETS["tiny-llama"], num_hidden_layers=4)

# Twice as wide (3.6M parameters with the toy tokenizer): for a base that must hold several
# retrieval skills at once; the 4-layer one trades multi-key against multi-value (docs/training.md).
TINY_PRESETS["tiny-llama-4l-wide"] = dict(
    TINY_PRESETS["tiny-llama-4l"],
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=8,
    num_key_value_heads=4,
)


def extended_rope_theta(theta: float, head_dim: int, original_length: int, target_length: int) -> float:
    """RoPE base for a window of ``target_length`` tokens, from a model trained at ``original_length``.

    The dynamic-NTK rule evaluated at the target, ``theta * (s * L / L0 - (s - 1)) ** (d / (d - 2))`` with
    ``s = L / L0``; it reproduces the paper's bases (Llama-3-8B: 48.9M at a target of 81,920 tokens,
    131.5M at 131,072; a target of 80,000 gives 46.5M).
    """
    if original_length <= 0 or target_length <= 0:
        raise ValueError("original_length and target_length must be positive")
    if head_dim <= 2:
        raise ValueError(f"head_dim must be > 2, got {head_dim}")
    s = target_length / original_length
    if s <= 1:
        return float(theta)
    return float(theta * (s * s - (s - 1)) ** (head_dim / (head_dim - 2)))


def model_head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def rope_theta_of(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def set_context_window(config: Any, target_length: int, rope_theta: float | None = None) -> float:
    """Raise the RoPE base (unless given) and the position limit of ``config`` for ``target_length`` tokens.

    Returns the base in use. Only plain ("default") RoPE is re-based; models that already carry a
    scaling rule (llama3, yarn, ...) keep it and only get the larger position limit.
    """
    original = int(config.max_position_embeddings)
    params = getattr(config, "rope_parameters", None)
    rope_type = (params or {}).get("rope_type", "default") if isinstance(params, dict) else "default"
    theta = rope_theta_of(config)
    if rope_theta is None:
        rope_theta = (
            extended_rope_theta(theta, model_head_dim(config), original, target_length)
            if rope_type == "default"
            else theta
        )
    if isinstance(params, dict):
        params["rope_theta"] = float(rope_theta)
    if hasattr(config, "rope_theta"):
        config.rope_theta = float(rope_theta)
    config.max_position_embeddings = max(original, int(target_length))
    return float(rope_theta)


def build_model(
    name_or_path: str, *, vocab_size: int | None = None, dtype: torch.dtype | None = None, seed: int = 0
):
    """A causal LM from a local path / hub name, or a ``tiny-*`` preset (random init, no download).
    ``dtype`` defaults to float32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    if name_or_path in TINY_PRESETS:
        if vocab_size is None:
            raise ValueError(f"model preset {name_or_path!r} needs vocab_size (from the tokenizer)")
        preset = dict(TINY_PRESETS[name_or_path])
        model_type = preset.pop("model_type")
        theta = preset.pop("rope_theta")
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **preset)
        if isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters["rope_theta"] = theta
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
