"""Stage 3 of the recipe: average the trained weights with the original model's."""

from __future__ import annotations

import torch


@torch.no_grad()
def merge_state_dicts(
    original: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], weight: float = 0.5
) -> dict[str, torch.Tensor]:
    """``(1 - weight) * original + weight * trained``, parameter by parameter, in float32, cast back.

    Both dicts must hold the same names and shapes (the trained model's config may differ, e.g. in RoPE
    base: the merged model keeps the trained config). Raises ValueError on any mismatch.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if original.keys() != trained.keys():
        missing = sorted(set(original) ^ set(trained))[:5]
        raise ValueError(f"the two models have different parameters, e.g. {missing}")
    out = {}
    for name, t in trained.items():
        o = original[name]
        if o.shape != t.shape:
            raise ValueError(f"parameter {name}: shape {tuple(o.shape)} vs {tuple(t.shape)}")
        if not t.is_floating_point():
            out[name] = t.clone()
            continue
        out[name] = ((1 - weight) * o.float() + weight * t.float()).to(t.dtype)
    return out


def merge_models(original, trained, weight: float = 0.5):
    """Load the merged weights into ``trained`` (in place) and return it."""
    merged = merge_state_dicts(original.state_dict(), trained.state_dict(), weight)
    trained.load_state_dict(merged)
    return trained
