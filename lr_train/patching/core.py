"""Shared machinery of ``lr_train.patch``: the family table entry, the packed-batch builder and the three
replacement forwards (attention, decoder stack, causal-LM head) that every supported family uses.

How a patched forward flows (no KV cache involved):

1. ``ForCausalLM.forward`` (replaced when ``cross_entropy=True``) calls the decoder stack and, given
   labels, computes the loss with ``lk.fused_linear_cross_entropy`` on the last hidden states instead of
   building ``[B, S, V]`` logits.
2. The decoder stack's ``forward`` (replaced when ``attention=True``) turns ``attention_mask`` /
   ``position_ids`` / ``cu_seq_lens_*`` into one :class:`VarlenBatch` (the packed layout the kernel
   wants), hands it to every layer through the layer kwargs, and gives transformers an empty 4D
   ``attention_mask`` so that it never materialises an ``[S, S]`` mask (a prepared 4D mask is returned
   as-is by ``transformers.masking_utils``).
3. Each attention module's ``forward`` (replaced) projects q, k, v for the kept tokens only, applies the
   family's own extras (Qwen3's per-head RMSNorm) and calls ``lk.varlen_attention`` with the position ids,
   so RoPE is applied inside the kernel.

With a KV cache (``cache`` / ``past_key_values`` given, or ``use_cache=True``) every replaced forward calls
the original one: that is how ``generate()`` keeps working. The cache is handed on under the name the
original forward declares (``cache`` since transformers renamed it, ``past_key_values`` before), so no
deprecation warning fires and no cache is dropped.

Everything is bound on the given model's own module instances (``types.MethodType``); classes,
``transformers`` module functions and ``torch.nn.functional`` are never touched.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import lr_kernels as lk
from lr_kernels.attention.interface import MAX_HEAD_DIM, MAX_POSITION, MIN_HEAD_DIM

# Name of the layer kwarg that carries the packed batch from the decoder stack to the attention modules.
VARLEN_KWARG = "lr_varlen"
_STATE_ATTR = "_lr_patch_state"
_FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
# Rope types whose frequencies transformers recomputes from the largest position id of each forward.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


@functools.cache
def _cache_kwarg_of(cls: type) -> str:
    """The keyword under which ``cls.forward`` (a transformers class) takes the KV cache.

    Read from the class, not from a saved instance forward, which may be a ``*args, **kwargs`` wrapper;
    ``inspect.signature`` follows the ``functools.wraps`` decorators transformers puts on forwards.
    """
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _call_original(module: nn.Module, original: Callable, kv_cache, *args, **kwargs):
    """Call ``module``'s original forward, passing ``kv_cache`` (when there is one) under the name its
    class declares."""
    if kv_cache is not None:
        kwargs[_cache_kwarg_of(type(module))] = kv_cache
    return original(*args, **kwargs)


class UnsupportedModelError(ValueError):
    """``lr_train.patch`` does not know this model (family, head class or rope configuration)."""


def qkv_projection(attn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Llama-style q/k/v projection of packed tokens: h [T, d] -> q [T, H, D], k, v [T, Hkv, D].

    Projection biases (Qwen2, ``attention_bias=True`` configs) come with the ``nn.Linear`` modules.
    """
    D = attn.head_dim
    q = attn.q_proj(h).unflatten(-1, (-1, D))
    k = attn.k_proj(h).unflatten(-1, (-1, D))
    v = attn.v_proj(h).unflatten(-1, (-1, D))
    return q, k, v


def no_sliding_window(attn: nn.Module) -> int | None:
    return None


def layer_sliding_window(attn: nn.Module) -> int | None:
    """The window transformers set on this layer's module (None for full-attention layers)."""
    return attn.sliding_window


@dataclass(frozen=True)
class FamilySpec:
    """One row of the family table: what differs between supported architectures.

    Attributes:
        name: family name shown to users ("llama").
        model_types: ``config.model_type`` values of this family.
        attention_class: class name of the family's attention module ("LlamaAttention"); a model whose
            layers hold anything else is refused.
        project: ``(attn, h [T, d]) -> (q [T, H, D], k [T, Hkv, D], v [T, Hkv, D])``, everything the
            module does before RoPE.
        sliding_window: ``attn -> window or None``; the fused kernel has no window, so a sequence longer
            than the window is refused (shorter ones are exactly full causal attention).
    """

    name: str
    model_types: tuple[str, ...]
    attention_class: str
    project: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default=qkv_projection
    )
    sliding_window: Callable[[nn.Module], int | None] = field(default=no_sliding_window)


@dataclass(frozen=True, eq=False)
class VarlenBatch:
    """A ``[B, S]`` batch in the packed layout of ``lk.varlen_attention``.

    Attributes:
        batch, seqlen: B and S of the padded layout transformers works in.
        indices: int64 ``[T]`` flat indices (into ``B * S``) of the tokens kept, or None when no token is
            padding (then the packed layout is the plain ``reshape(B * S, ...)``).
        cu_seqlens: int32 ``[N + 1]`` sequence boundaries in the packed layout.
        max_seqlen: longest sequence.
        position_ids: int64 ``[T]`` RoPE positions of the kept tokens.
        inv_freq: fp32 ``[D / 2]`` on the batch's device; attention_scaling: HF's cos/sin factor.
        backend: passed to the kernels.
    """

    batch: int
    seqlen: int
    indices: torch.Tensor | None
    cu_seqlens: torch.Tensor
    max_seqlen: int
    position_ids: torch.Tensor
    inv_freq: torch.Tensor
    attention_scaling: float
    backend: str

    @property
    def num_tokens(self) -> int:
        return self.position_ids.shape[0]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, F] -> [T, F] (a view when nothing is padded)."""
        flat = x.reshape(self.batch * self.seqlen, *x.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def pad(self, y: torch.Tensor) -> torch.Tensor:
        """[T, F] -> [B, S, F]; padding positions get zeros."""
        if self.indices is not None:
            full = y.new_zeros(self.batch * self.seqlen, *y.shape[1:])
            y = full.index_copy(0, self.indices, y)
        return y.reshape(self.batch, self.seqlen, *y.shape[1:])


def _as_int(name: str, value: object) -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point():
            raise ValueError(f"{name} must be an int (or a one-element integer tensor), got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value


def _normalise_position_ids(position_ids: torch.Tensor | None, B: int, S: int, device) -> torch.Tensor:
    """``None``, ``[S]``, ``[1, S]`` or ``[B, S]`` integer position ids -> int64 ``[B, S]`` on ``device``."""
    if position_ids is None:
        return torch.arange(S, device=device).expand(B, S)
    if (
        not isinstance(position_ids, torch.Tensor)
        or position_ids.is_floating_point()
        or position_ids.is_complex()
    ):
        raise ValueError(
            f"position_ids must be an integer tensor, got {getattr(position_ids, 'dtype', position_ids)}"
        )
    shape = tuple(position_ids.shape)
    if shape == (S,):
        position_ids = position_ids[None]
    elif not (position_ids.dim() == 2 and position_ids.shape[1] == S and position_ids.shape[0] in (1, B)):
        raise ValueError(
            f"position_ids must have shape (batch, seq_len) = ({B}, {S}) or (1, {S}), got {shape}"
        )
    return position_ids.to(device=device, dtype=torch.int64).expand(B, S)


def _explicit_cu_seqlens(
    T: int,
    device,
    cu_seq_lens_q: torch.Tensor,
    cu_seq_lens_k: torch.Tensor | None,
    max_length_q: object,
    max_length_k: object,
) -> tuple[torch.Tensor, int]:
    """Validate caller-given boundaries (e.g. from ``DataCollatorWithFlattening``) against T tokens."""
    if not isinstance(cu_seq_lens_q, torch.Tensor):
        cu_seq_lens_q = torch.as_tensor(cu_seq_lens_q)
    if cu_seq_lens_q.dim() != 1 or cu_seq_lens_q.numel() < 2 or cu_seq_lens_q.is_floating_point():
        raise ValueError(
            f"cu_seq_lens_q must be a 1D integer tensor with >= 2 entries, got shape "
            f"{tuple(cu_seq_lens_q.shape)} dtype {cu_seq_lens_q.dtype}"
        )
    cu = cu_seq_lens_q.to(device=device, dtype=torch.int32)
    if cu_seq_lens_k is not None:
        other = torch.as_tensor(cu_seq_lens_k).to(device=device, dtype=torch.int32)
        if other.shape != cu.shape or not torch.equal(other, cu):
            raise ValueError(
                "cu_seq_lens_k must equal cu_seq_lens_q: without a KV cache this is self-attention"
            )
    lengths = cu[1:] - cu[:-1]
    first, last, shortest, longest = torch.stack([cu[0], cu[-1], lengths.min(), lengths.max()]).tolist()
    if first != 0 or last != T:
        raise ValueError(
            f"cu_seq_lens_q must run from 0 to the number of (non-padding) tokens in the batch, {T}; "
            f"got {first} .. {last}"
        )
    if shortest <= 0:
        raise ValueError("cu_seq_lens_q must be strictly increasing (every sequence holds >= 1 token)")
    for name, value in (("max_length_q", max_length_q), ("max_length_k", max_length_k)):
        if value is not None and _as_int(name, value) < longest:
            raise ValueError(
                f"{name} must be >= the longest sequence in cu_seq_lens_q ({longest}), got {value}"
            )
    return cu, longest


class RopeSource:
    """The model's RoPE frequencies, from ``lk.rope_frequencies(model.config)``, cached per device.

    For ``dynamic`` and ``longrope`` transformers derives the frequencies from ``max(position_ids) + 1``
    in every forward; we do the same (without transformers' memory of the longest length seen so far).
    """

    def __init__(self, config):
        self.config = config
        self.base = lk.rope_frequencies(config)
        self._cache: dict[torch.device, torch.Tensor] = {}

    def for_positions(self, max_position: int, device) -> tuple[torch.Tensor, float]:
        if self.base.rope_type in _LENGTH_DEPENDENT_ROPE:
            rope = lk.rope_frequencies(self.config, seq_len=max_position + 1)
            return rope.inv_freq.to(device), rope.attention_scaling
        device = torch.device(device)
        if device not in self._cache:
            self._cache[device] = self.base.inv_freq.to(device)
        return self._cache[device], self.base.attention_scaling


def build_varlen_batch(
    B: int,
    S: int,
    device,
    *,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    rope: RopeSource,
    backend: str,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: object = None,
    max_length_k: object = None,
) -> VarlenBatch:
    """Pack a ``[B, S]`` batch: drop padding, find sequence boundaries, check positions.

    Boundaries: ``cu_seq_lens_q`` (over the non-padding tokens, in row-major order) when given; else each
    row is split wherever its position ids do not increase (``lk.cu_seqlens_from_position_ids``), so a row
    may hold several packed sequences but a sequence never crosses rows.
    """
    pos = _normalise_position_ids(position_ids, B, S, device)
    keep = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, S):
            got = tuple(getattr(attention_mask, "shape", ())) or type(attention_mask).__name__
            raise ValueError(
                f"attention_mask must be a 2D padding mask of shape (batch, seq_len) = ({B}, {S}) on the "
                f"fused path, got {got}; custom 4D masks are not supported (lr_train.unpatch the model to "
                "use them)"
            )
        mask = attention_mask.to(device=device).bool()
        if not bool(mask.all()):
            keep = mask
    if keep is None:
        indices = None
        flat_pos = pos.reshape(-1)
        row_lengths = [S] * B
    else:
        indices = keep.reshape(-1).nonzero().squeeze(1)
        flat_pos = pos.reshape(-1).index_select(0, indices)
        row_lengths = keep.sum(dim=1).tolist()
    T = flat_pos.shape[0]
    if T == 0:
        raise ValueError("attention_mask masks every token: there is nothing to attend over")

    lo, hi = torch.stack([flat_pos.min(), flat_pos.max()]).tolist()
    if lo < 0:
        raise ValueError(f"position_ids must be >= 0, got a minimum of {lo}")
    if hi > MAX_POSITION:
        raise ValueError(f"position_ids must be <= {MAX_POSITION} (the RoPE kernels' range), got {hi}")
    inv_freq, attention_scaling = rope.for_positions(hi, device)

    if cu_seq_lens_q is not None:
        cu_seqlens, max_seqlen = _explicit_cu_seqlens(
            T, device, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k
        )
    else:
        if cu_seq_lens_k is not None:
            raise ValueError("cu_seq_lens_k was given without cu_seq_lens_q")
        pieces, max_seqlen, offset = [torch.zeros(1, dtype=torch.int32, device=device)], 0, 0
        for n in row_lengths:
            if n == 0:
                continue
            cu_row, longest = lk.cu_seqlens_from_position_ids(flat_pos[offset : offset + n])
            pieces.append(cu_row[1:] + offset)
            max_seqlen = max(max_seqlen, longest)
            offset += n
        cu_seqlens = torch.cat(pieces)
    return VarlenBatch(
        batch=B,
        seqlen=S,
        indices=indices,
        cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen,
        position_ids=flat_pos.contiguous(),
        inv_freq=inv_freq,
        attention_scaling=attention_scaling,
        backend=backend,
    )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an ``nn.Linear`` output would have here: the autocast dtype inside autocast."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def make_attention_forward(spec: FamilySpec, saved_forward: Callable | None) -> Callable:
    """The replacement ``forward`` of one attention module (bind it with ``types.MethodType``)."""

    def forward(
        self: nn.Module,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """Fused varlen attention with in-kernel RoPE; hidden_states [B, S, d] -> ([B, S, d], None).

        Runs only inside a patched decoder stack without a KV cache (which passes the packed batch as
        the ``lr_varlen`` kwarg); otherwise the module's original forward runs.
        """
        varlen: VarlenBatch | None = kwargs.pop(VARLEN_KWARG, None)
        kv_cache = cache if cache is not None else past_key_values
        if varlen is None or kv_cache is not None:
            original = saved_forward if saved_forward is not None else type(self).forward.__get__(self)
            return _call_original(
                self,
                original,
                kv_cache,
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                **kwargs,
            )
        if self.training and self.attention_dropout > 0:
            raise ValueError(
                f"config.attention_dropout={self.attention_dropout}: the fused attention has no dropout; set "
                "it to 0.0 or lr_train.unpatch the model"
            )
        window = spec.sliding_window(self)
        if window is not None and varlen.max_seqlen > window:
            raise ValueError(
                f"sliding_window={window} (config): a sequence of {varlen.max_seqlen} tokens would need the "
                "window, which the fused attention does not implement; set config.sliding_window = None "
                "(full attention) or keep sequences <= the window"
            )
        h = varlen.unpad(hidden_states)
        q, k, v = spec.project(self, h)
        dtype = _compute_dtype(q)
        out = lk.varlen_attention(
            q.to(dtype),
            k.to(dtype),
            v.to(dtype),
            varlen.cu_seqlens,
            varlen.max_seqlen,
            causal=bool(kwargs.get("is_causal", getattr(self, "is_causal", True))),
            softmax_scale=self.scaling,
            position_ids=varlen.position_ids,
            inv_freq=varlen.inv_freq,
            attention_scaling=varlen.attention_scaling,
            backend=varlen.backend,
        )
        out = self.o_proj(out.flatten(1))
        return varlen.pad(out), None

    return forward


def make_decoder_forward(rope: RopeSource, backend: str, saved_forward: Callable | None) -> Callable:
    """The replacement ``forward`` of the decoder stack (``LlamaModel`` and friends)."""

    def forward(
        self: nn.Module,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values=None,
        **kwargs,
    ):
        """Packs the batch for the fused attention, then runs the original forward.

        A KV cache (``cache`` or the older ``past_key_values`` given, or ``use_cache=True``) selects the
        original path unchanged. Without one, ``use_cache`` is treated as False (the fused path builds no
        cache, so the output's cache is None even when ``config.use_cache`` is True).
        """
        original = saved_forward if saved_forward is not None else type(self).forward.__get__(self)
        kv_cache = cache if cache is not None else past_key_values
        if kv_cache is not None or use_cache:
            return _call_original(
                self,
                original,
                kv_cache,
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
        ref = inputs_embeds if inputs_embeds is not None else input_ids
        if ref is None:
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        B, S = ref.shape[:2]
        flash = {name: kwargs.pop(name, None) for name in _FLASH_KWARGS}
        varlen = build_varlen_batch(
            B,
            S,
            ref.device,
            attention_mask=attention_mask,
            position_ids=position_ids,
            rope=rope,
            backend=backend,
            **flash,
        )
        kwargs[VARLEN_KWARG] = varlen
        # An already prepared 4D mask is returned as-is by transformers' mask builders, so this keeps them
        # from materialising [B, 1, S, S]; the fused attention ignores it, and its zero size makes any
        # other consumer fail loudly instead of attending without a mask.
        placeholder_mask = torch.zeros((B, 1, 0, 0), dtype=torch.bool, device=ref.device)
        return original(
            input_ids=input_ids,
            attention_mask=placeholder_mask,
            position_ids=_normalise_position_ids(position_ids, B, S, ref.device),
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )

    return forward


def causal_lm_loss(
    hidden: torch.Tensor,
    lm_head: nn.Linear,
    labels: torch.Tensor,
    *,
    backend: str,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` without the logits: fp32 scalar.

    hidden: [B, S, d] last hidden states; labels: [B, S] (token t predicts labels[t + 1]; the last token
    of every row predicts nothing) or ``shift_labels`` [B, S] already shifted. Mean over non-ignored
    targets, or sum / ``num_items_in_batch`` when given (gradient accumulation in the HF Trainer).
    """
    if shift_labels is None:
        if tuple(labels.shape) != tuple(hidden.shape[:2]):
            raise ValueError(
                f"labels must have shape (batch, seq_len) = {tuple(hidden.shape[:2])} like the hidden states "
                f"it scores, got {tuple(labels.shape)}"
            )
        shift_labels = torch.cat(
            [labels[..., 1:], labels.new_full((*labels.shape[:-1], 1), ignore_index)], dim=-1
        )
    if shift_labels.numel() != hidden.shape[0] * hidden.shape[1]:
        raise ValueError(
            f"shift_labels must have one target per position, {tuple(hidden.shape[:2])}, got "
            f"{tuple(shift_labels.shape)}"
        )
    dtype = _compute_dtype(hidden)
    bias = lm_head.bias.to(dtype) if lm_head.bias is not None else None
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = lk.fused_linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]).to(dtype),
        lm_head.weight.to(dtype),
        shift_labels.reshape(-1).to(hidden.device),
        bias=bias,
        ignore_index=ignore_index,
        reduction=reduction,
        backend=backend,
    ).float()
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def make_causal_lm_forward(backend: str, saved_forward: Callable | None) -> Callable:
    """The replacement ``forward`` of a ``*ForCausalLM`` head."""
    from transformers.loss.loss_utils import ForCausalLMLoss
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.modeling_utils import slice_logits_to_keep
    from transformers.utils import can_return_tuple

    @can_return_tuple
    def forward(
        self: nn.Module,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values=None,
        **kwargs,
    ):
        """Causal-LM forward whose loss never materialises the logits.

        With ``labels`` (and no KV cache, and the model's default ``ForCausalLMLoss``) the loss comes from
        ``lk.fused_linear_cross_entropy`` on the last hidden states and ``outputs.logits`` is None.
        Otherwise this is the model's original forward.
        """
        kv_cache = cache if cache is not None else past_key_values
        if labels is None or kv_cache is not None or use_cache or self.loss_function is not ForCausalLMLoss:
            original = saved_forward if saved_forward is not None else type(self).forward.__get__(self)
            return _call_original(
                self,
                original,
                kv_cache,
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                return_dict=True,
                **kwargs,
            )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        loss = causal_lm_loss(
            hidden,
            self.lm_head,
            labels,
            backend=backend,
            num_items_in_batch=kwargs.get("num_items_in_batch"),
            ignore_index=kwargs.get("ignore_index", -100),
            shift_labels=kwargs.get("shift_labels"),
        )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    return forward


@dataclass
class PatchState:
    """What ``unpatch`` needs: every module whose ``forward`` we replaced and what it had before."""

    family: str
    attention: bool
    cross_entropy: bool
    backend: str
    # (module, the instance-level forward it had before, or None when it used its class's forward)
    replaced: list[tuple[nn.Module, Callable | None]] = field(default_factory=list)


def _replace_forward(
    state: PatchState, module: nn.Module, make: Callable[[Callable | None], Callable]
) -> None:
    saved = module.__dict__.get("forward")
    module.forward = types.MethodType(make(saved), module)
    state.replaced.append((module, saved))


def _find_parts(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(decoder stack, causal-LM head or None) of a supported model object."""
    if hasattr(model, "layers") and hasattr(model, "embed_tokens"):
        return model, None
    inner = getattr(model, "model", None)
    if (
        type(model).__name__.endswith("ForCausalLM")
        and isinstance(getattr(model, "lm_head", None), nn.Linear)
        and inner is not None
        and hasattr(inner, "layers")
    ):
        return inner, model
    raise UnsupportedModelError(
        f"{type(model).__name__}: lr_train.patch takes a decoder stack (e.g. LlamaModel) or a *ForCausalLM "
        "model of a supported family"
    )


def get_state(model: nn.Module) -> PatchState | None:
    return model.__dict__.get(_STATE_ATTR)


def apply_patch(
    model: nn.Module, spec: FamilySpec, *, attention: bool, cross_entropy: bool, backend: str
) -> PatchState:
    """Validate the model against ``spec`` and replace the forwards (see ``lr_train.patch``)."""
    base, head = _find_parts(model)
    if cross_entropy and head is None:
        raise ValueError(
            f"cross_entropy=True needs a *ForCausalLM model with an lm_head; {type(model).__name__} has none "
            "(pass cross_entropy=False to patch only the attention)"
        )
    for part in {id(base): base, id(head): head}.values():
        if part is not None and part is not model and get_state(part) is not None:
            raise ValueError(f"model.{type(part).__name__} is already patched on its own; unpatch it first")
    attn_modules = []
    for i, layer in enumerate(base.layers):
        attn = getattr(layer, "self_attn", None)
        if type(attn).__name__ != spec.attention_class:
            raise UnsupportedModelError(
                f"layer {i} holds {type(attn).__name__}, not the {spec.attention_class} of the {spec.name} "
                "family that lr_train.patch knows"
            )
        attn_modules.append(attn)
    rope = None
    if attention:
        try:
            rope = RopeSource(model.config)
        except ValueError as err:
            raise UnsupportedModelError(f"{spec.name}: unsupported RoPE configuration: {err}") from err
        head_dim = attn_modules[0].head_dim if attn_modules else rope.base.head_dim
        if rope.base.rotary_dim != head_dim:
            raise UnsupportedModelError(
                f"{spec.name}: partial rotary embeddings (rotary_dim {rope.base.rotary_dim} < head_dim "
                f"{head_dim}) are not supported by the fused attention"
            )
        if not (MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM) or head_dim % 2:
            raise UnsupportedModelError(
                f"{spec.name}: head_dim {head_dim} is outside the fused attention's range "
                f"(even, {MIN_HEAD_DIM}..{MAX_HEAD_DIM})"
            )

    state = PatchState(family=spec.name, attention=attention, cross_entropy=cross_entropy, backend=backend)
    if attention:
        for attn in attn_modules:
            _replace_forward(state, attn, lambda saved: make_attention_forward(spec, saved))
        _replace_forward(state, base, lambda saved: make_decoder_forward(rope, backend, saved))
    if cross_entropy:
        _replace_forward(state, head, lambda saved: make_causal_lm_forward(backend, saved))
    model.__dict__[_STATE_ATTR] = state
    return state


def remove_patch(model: nn.Module) -> None:
    """Put back every replaced forward and drop the patch state (no-op on an unpatched model)."""
    state = model.__dict__.pop(_STATE_ATTR, None)
    if state is None:
        return
    for module, saved in reversed(state.replaced):
        if saved is None:
            del module.__dict__["forward"]
        else:
            module.__dict__["forward"] = saved
