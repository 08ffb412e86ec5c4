"""RoPE inverse frequencies and attention scaling for the rope types Hugging Face models use.

The numbers match ``transformers.modeling_rope_utils`` (rope types default, linear, dynamic, yarn, llama3,
longrope) bit for bit: every step is the same float32 torch operation in the same order, because a
model fine-tuned with our kernels must see exactly the frequencies it sees at inference under plain
transformers. ``lr_kernels`` does not import transformers; the tests compare against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
DEFAULT_ROPE_THETA = 10_000.0

# Keys that make a plain dict a model config (rather than a rope-parameter dict).
_CONFIG_KEYS = ("rope_parameters", "rope_scaling", "hidden_size", "num_attention_heads")


@dataclass(frozen=True, eq=False)
class RopeFrequencies:
    """What ``apply_rope`` / ``varlen_attention`` need to rotate q and k for one model config.

    Attributes:
        inv_freq: float32 ``[rotary_dim // 2]`` CPU tensor of inverse frequencies.
        attention_scaling: factor applied to cos and sin (1.0 except for yarn and longrope).
        rope_type: one of ``ROPE_TYPES``.
        head_dim: the attention head size ``D``.
        rotary_dim: how many leading features of each head are rotated (``head_dim`` unless the config
            has ``partial_rotary_factor < 1``); ``inv_freq`` has ``rotary_dim // 2`` entries.
        rope_theta: the config's base (after defaults; before dynamic NTK growth).
        max_position: the largest position id for which transformers uses these same frequencies, or
            ``None`` when it uses them at every position. Only ``dynamic`` (frequencies depend on the
            sequence length) and ``longrope`` with its short factors (beyond
            ``original_max_position_embeddings`` transformers switches to the long factors) are bounded.
    """

    inv_freq: torch.Tensor
    attention_scaling: float
    rope_type: str
    head_dim: int
    rotary_dim: int
    rope_theta: float
    max_position: int | None = None

    def check_positions(self, position_ids: torch.Tensor, name: str = "position_ids") -> None:
        """Raise ValueError if any position is negative or beyond ``max_position``."""
        if position_ids.numel() == 0:
            return
        lo, hi = int(position_ids.min()), int(position_ids.max())
        if lo < 0:
            raise ValueError(f"{name} must be non-negative, got a minimum of {lo}")
        if self.max_position is not None and hi > self.max_position:
            raise ValueError(
                f"{name} reach {hi}, but these {self.rope_type!r} RoPE frequencies are valid only up to "
                f"position {self.max_position}; build them with rope_frequencies(..., seq_len={hi + 1})"
            )


class _Source:
    """Uniform read access to an HF config object or a plain dict."""

    def __init__(self, obj: Any):
        self.obj = obj

    def get(self, name: str, default: Any = None) -> Any:
        if isinstance(self.obj, Mapping):
            value = self.obj.get(name, default)
        else:
            value = getattr(self.obj, name, default)
        return default if value is None else value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _rope_params(src: _Source, is_config: bool) -> dict[str, Any]:
    """The flat rope-parameter dict, with rope_theta / rope_type / partial_rotary_factor filled in."""
    if is_config:
        raw = src.get("rope_parameters") or src.get("rope_scaling") or {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"config rope_parameters must be a dict, got {type(raw).__name__}")
    else:
        raw = src.obj
    if any(isinstance(v, Mapping) for v in raw.values()):
        raise ValueError(
            "config_or_rope_params has per-layer-type rope parameters (nested dicts); pass the dict of one "
            "layer type, e.g. rope_frequencies(config.rope_parameters['full_attention'], head_dim=...)"
        )
    params = dict(raw)
    params.setdefault("rope_theta", src.get("rope_theta", DEFAULT_ROPE_THETA))
    if params["rope_theta"] is None:
        params["rope_theta"] = src.get("rope_theta", DEFAULT_ROPE_THETA)
    if params.get("partial_rotary_factor") is None:
        params["partial_rotary_factor"] = src.get("partial_rotary_factor", 1.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))


def _required(params: dict[str, Any], key: str, rope_type: str) -> Any:
    if params.get(key) is None:
        raise ValueError(
            f"config_or_rope_params: rope_type {rope_type!r} needs {key!r} in its rope parameters"
        )
    return params[key]


def _need_max_pos(max_pos: int | None, rope_type: str) -> int:
    if max_pos is None:
        raise ValueError(
            f"config_or_rope_params: rope_type {rope_type!r} needs max_position_embeddings (set it on the "
            "config, or as a key of the rope-parameter dict)"
        )
    return max_pos


def _yarn(params: dict[str, Any], base: float, dim: int, max_pos: int | None) -> tuple[torch.Tensor, float]:
    factor = params.get("factor")
    original = _required(params, "original_max_position_embeddings", "yarn")
    if factor is None:
        factor = _need_max_pos(max_pos, "yarn") / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        # The dimension whose wavelength fits num_rotations times into the original context.
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)

    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    extrapolation_weight = 1 - ramp
    inv_freq = (
        inv_freq_interpolation * (1 - extrapolation_weight) + inv_freq_extrapolation * extrapolation_weight
    )
    return inv_freq, float(attention_factor)


def _llama3(params: dict[str, Any], base: float, dim: int) -> torch.Tensor:
    inv_freq = _base_inv_freq(base, dim)
    factor = _required(params, "factor", "llama3")
    low_freq_factor = _required(params, "low_freq_factor", "llama3")
    high_freq_factor = _required(params, "high_freq_factor", "llama3")
    old_context_len = _required(params, "original_max_position_embeddings", "llama3")
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    # Short wavelengths stay, long ones are divided by factor, the band between is blended smoothly.
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _longrope(
    params: dict[str, Any], base: float, dim: int, max_pos: int | None, seq_len: int | None
) -> tuple[torch.Tensor, float, int | None]:
    long_factor = _required(params, "long_factor", "longrope")
    short_factor = _required(params, "short_factor", "longrope")
    original = _required(params, "original_max_position_embeddings", "longrope")
    factor = params.get("factor")
    if factor is None:
        factor = _need_max_pos(max_pos, "longrope") / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        # The LongRoPE paper's suggestion; no scaling when the context is not extended.
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    use_long = bool(seq_len) and seq_len > original
    ext = long_factor if use_long else short_factor
    if len(ext) != dim // 2:
        which = "long_factor" if use_long else "short_factor"
        raise ValueError(
            f"config_or_rope_params: longrope {which} must have rotary_dim // 2 = {dim // 2} entries, "
            f"got {len(ext)}"
        )
    ext_factors = torch.tensor(ext, dtype=torch.float32)
    inv_freq_shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (ext_factors * base**inv_freq_shape)
    # With the short factors transformers switches to the long ones past the original length.
    max_position = None if use_long else original - 1
    return inv_freq, float(attention_factor), max_position


def rope_frequencies(
    config_or_rope_params: Any, head_dim: int | None = None, seq_len: int | None = None
) -> RopeFrequencies:
    """Inverse frequencies and attention scaling for a model's RoPE, as transformers computes them.

    Args:
        config_or_rope_params: an HF config object (reads ``rope_parameters``, or the legacy
            ``rope_scaling`` + ``rope_theta``, plus ``head_dim`` / ``hidden_size`` /
            ``num_attention_heads``, ``partial_rotary_factor``, ``max_position_embeddings`` and
            ``original_max_position_embeddings``), a plain dict with those same keys, or a plain
            rope-parameter dict such as ``{"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, ...}``
            (then ``head_dim`` is required, and ``max_position_embeddings`` may be given as a key).
        head_dim: attention head size ``D``; overrides the config's.
        seq_len: the sequence length the frequencies are for. ``dynamic`` NTK scaling grows its base
            for ``seq_len`` beyond ``max_position_embeddings``; ``longrope`` uses its long factors when
            ``seq_len > original_max_position_embeddings``. The other types do not depend on it.

    Returns:
        RopeFrequencies with ``inv_freq`` float32 ``[rotary_dim // 2]`` on the CPU.

    Raises:
        ValueError: unknown rope type, missing parameters, no way to derive ``head_dim``, bad sizes.
    """
    if not isinstance(config_or_rope_params, Mapping) and not hasattr(config_or_rope_params, "__dict__"):
        raise ValueError(
            "config_or_rope_params must be an HF config object or a dict, got "
            f"{type(config_or_rope_params).__name__}"
        )
    src = _Source(config_or_rope_params)
    is_config = not isinstance(config_or_rope_params, Mapping) or any(
        k in config_or_rope_params for k in _CONFIG_KEYS
    )
    params = _rope_params(src, is_config)
    rope_type = params["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"config_or_rope_params: rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")

    if head_dim is None:
        head_dim = src.get("head_dim")
    if head_dim is None:
        hidden, heads = src.get("hidden_size"), src.get("num_attention_heads")
        if hidden is None or heads is None:
            raise ValueError(
                "head_dim is required: config_or_rope_params has neither head_dim nor "
                "hidden_size and num_attention_heads"
            )
        head_dim = _positive_int("hidden_size", hidden) // _positive_int("num_attention_heads", heads)
    head_dim = _positive_int("head_dim", head_dim)
    if seq_len is not None:
        seq_len = _positive_int("seq_len", seq_len)

    prf = float(params["partial_rotary_factor"])
    if not 0.0 < prf <= 1.0:
        raise ValueError(f"config_or_rope_params: partial_rotary_factor must be in (0, 1], got {prf}")
    dim = int(head_dim * prf)
    if dim < 2 or dim % 2:
        raise ValueError(
            f"head_dim: the rotary dimension int(head_dim * partial_rotary_factor) = {dim} must be even and "
            f">= 2 (head_dim={head_dim}, partial_rotary_factor={prf})"
        )
    base = params["rope_theta"]
    max_pos = src.get("max_position_embeddings")
    if rope_type in ("llama3", "yarn", "longrope"):
        # Phi3-style configs keep the pretraining length outside the rope parameters; it wins there.
        original = src.get("original_max_position_embeddings") if is_config else None
        if original is not None:
            params["original_max_position_embeddings"] = original
        elif params.get("original_max_position_embeddings") is None and max_pos is not None:
            params["original_max_position_embeddings"] = max_pos

    attention_scaling = 1.0
    max_position: int | None = None
    if rope_type == "default":
        inv_freq = _base_inv_freq(base, dim)
    elif rope_type == "linear":
        inv_freq = _base_inv_freq(base, dim) / _required(params, "factor", rope_type)
    elif rope_type == "dynamic":
        factor = _required(params, "factor", rope_type)
        max_pos = _need_max_pos(max_pos, rope_type)
        length = max(seq_len or max_pos, max_pos)
        base = base * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        inv_freq = _base_inv_freq(base, dim)
        max_position = length - 1
    elif rope_type == "yarn":
        inv_freq, attention_scaling = _yarn(params, base, dim, max_pos)
    elif rope_type == "llama3":
        inv_freq = _llama3(params, base, dim)
    else:
        inv_freq, attention_scaling, max_position = _longrope(params, base, dim, max_pos, seq_len)

    return RopeFrequencies(
        inv_freq=inv_freq.to(torch.float32).contiguous(),
        attention_scaling=float(attention_scaling),
        rope_type=rope_type,
        head_dim=head_dim,
        rotary_dim=dim,
        rope_theta=float(params["rope_theta"]),
        max_position=max_position,
    )
