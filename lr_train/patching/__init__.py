"""``lr_train.patch(model)``: lr_kernels' fused RoPE attention and fused cross-entropy inside a Hugging Face
model, scoped to that one model instance and fully reversible.

The shared machinery lives in ``core.py``; each family module (``llama.py``, ...) contributes one
:class:`~lr_train.patching.core.FamilySpec` row to the table below.
"""

from __future__ import annotations

from torch import nn

from lr_train.patching import arcee, gemma, llama, mistral, qwen2, qwen3
from lr_train.patching.core import FamilySpec, UnsupportedModelError, apply_patch, get_state, remove_patch

FAMILIES: tuple[FamilySpec, ...] = (llama.SPEC, mistral.SPEC, qwen2.SPEC, qwen3.SPEC, gemma.SPEC, arcee.SPEC)
SUPPORTED_MODELS: tuple[str, ...] = tuple(spec.name for spec in FAMILIES)

_BACKENDS = ("auto", "triton", "torch")


def _family_of(model: nn.Module) -> FamilySpec:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in FAMILIES:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedModelError(
        f"{type(model).__name__} (model_type={model_type!r}) is not supported by lr_train.patch; supported "
        f"families: {', '.join(SUPPORTED_MODELS)}"
    )


def patch(
    model: nn.Module, *, attention: bool = True, cross_entropy: bool = True, backend: str = "auto"
) -> nn.Module:
    """Make ``model`` use lr_kernels' fused attention and cross-entropy, in place; returns ``model``.

    Only this model instance changes: the ``forward`` of its attention modules, of its decoder stack and
    of its ``*ForCausalLM`` head are replaced by bound methods on those instances; classes, other models
    of the same class, ``transformers`` functions and ``torch.nn.functional`` are untouched, and
    ``state_dict`` is unchanged. Calling ``patch`` again re-patches with the new options (idempotent for
    the same options); :func:`unpatch` restores exactly the original.

    Args:
        model: a ``*ForCausalLM`` (or the bare decoder stack, e.g. ``LlamaModel``, with
            ``cross_entropy=False``) of a family in ``SUPPORTED_MODELS``: llama (incl. Llama 3.x rope
            scaling), mistral, qwen2 (Qwen2 / Qwen2.5), qwen3, gemma (Gemma 1), arcee.
        attention: replace attention with ``lk.varlen_attention``: q/k/v projections (+ Qwen2 biases,
            + Qwen3 q/k RMSNorm), then RoPE from the model's own frequencies (``lk.rope_frequencies(config)``,
            rope scaling and attention scaling included) applied inside the kernel from ``position_ids``.
            Inputs: ``input_ids`` / ``inputs_embeds`` ``[B, S]``; ``position_ids`` ``[B, S]`` / ``[1, S]`` /
            ``[S]`` (default ``arange(S)``; any non-negative values, e.g. LongRecipe's remapped
            positions); ``attention_mask`` ``[B, S]`` with zeros at padding (padding is removed before the
            kernel and zeros put back after); sequence boundaries from ``cu_seq_lens_q`` /
            ``cu_seq_lens_k`` / ``max_length_q`` / ``max_length_k`` (as ``DataCollatorWithFlattening``
            produces) when given, else a new sequence starts in each row wherever its position ids do not
            increase.
        cross_entropy: when ``labels`` are given, compute transformers' causal-LM loss (shifted labels,
            ``ignore_index=-100``, mean, or sum / ``num_items_in_batch``) with
            ``lk.fused_linear_cross_entropy`` from the last hidden states; the ``[B, S, V]`` logits are
            never built and ``outputs.logits`` is None. Without labels the logits are computed as usual
            (``logits_to_keep`` honoured).
        backend: "auto" (Triton on CUDA tensors, PyTorch on CPU), "triton" or "torch".

    KV cache: with ``cache`` (or the older ``past_key_values``) given or ``use_cache=True`` (what
    ``generate()`` does) the model's original forwards run, so generation works as before. Without them
    ``use_cache`` counts as False and the output's cache is None even if ``config.use_cache`` is True.

    Raises:
        UnsupportedModelError: (a ValueError) the model is not of a supported family or structure.
        ValueError: a bad ``backend`` / flag. At forward time: ``position_ids`` of the wrong shape or
            negative or past what the rope configuration supports, ``cu_seq_lens_q`` disagreeing with
            the batch, a 4D ``attention_mask``, a sequence longer than a configured ``sliding_window``, or
            attention dropout in training.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    for name, flag in (("attention", attention), ("cross_entropy", cross_entropy)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    if not (attention or cross_entropy):
        raise ValueError("attention and cross_entropy are both False: there is nothing to patch")
    spec = _family_of(model)
    state = get_state(model)
    if state is not None:
        if (state.attention, state.cross_entropy, state.backend) == (attention, cross_entropy, backend):
            return model
        remove_patch(model)
    apply_patch(model, spec, attention=attention, cross_entropy=cross_entropy, backend=backend)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restore every forward :func:`patch` replaced and remove its state; a no-op if not patched."""
    remove_patch(model)
    return model


def is_patched(model: nn.Module) -> bool:
    """True if :func:`patch` was applied to this model instance (and not undone)."""
    return get_state(model) is not None


__all__ = [
    "FAMILIES",
    "SUPPORTED_MODELS",
    "FamilySpec",
    "UnsupportedModelError",
    "is_patched",
    "patch",
    "unpatch",
]
