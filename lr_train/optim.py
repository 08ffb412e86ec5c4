"""The optimizer of a training stage: fp32 master weights (on the GPU or the CPU), or Kahan-compensated bf16.

Why master weights: AdamW's update at the anneal stage's learning rate (5e-6) is far below half a bf16
ulp of a typical weight (|w| ~ 0.02 -> ulp 1.2e-4), so updating bf16 weights in place rounds most updates
away (20 steps changed 7.5% of the weights in the issue that introduced this module). Here the optimizer
updates fp32 copies and the model's compute-dtype weights are refreshed from them after every step.

``MasterWeights`` is also the optimizer offload: with ``device="cpu"`` the masters, their fp32 gradient
buffers and the AdamW state live in CPU memory and ``torch.optim.AdamW(fused=True)`` steps there (the
same role as DeepSpeed's ZeRO-Offload with its CPU Adam). Gradients leave the GPU as soon as backward
produces them (a post-accumulate-grad hook adds each into its fp32 buffer and frees it), so the GPU never
holds a full set of gradients, and micro-batches accumulate in fp32.

``precision="pure-bf16"`` keeps only bf16 weights and uses ``optimi.AdamW`` with Kahan summation (bf16
moments and a bf16 compensation buffer: 6 bytes per parameter instead of 16).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

PRECISIONS = ("mixed", "pure-bf16")


def param_groups(model: nn.Module, weight_decay: float) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """(``"decay"`` | ``"no_decay"``, [(name, param)]) for the trainable parameters; norms and biases
    (1-D tensors) get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "norm" in name else decay).append((name, p))
    return [("decay", decay), ("no_decay", no_decay)]


class MasterWeights:
    """fp32 master copies of a model's trainable weights, on ``device``, updated by an optimizer over them.

    Args:
        params: the model's trainable parameters, any float dtype, any device.
        device: where the masters, their fp32 gradients and (through the optimizer) its state live.
        grad_hooks: move each gradient into its fp32 buffer as soon as backward makes it (True), or at
            :meth:`collect_grads` time (False: needed when another engine, e.g. DDP, reads ``.grad``
            after backward).
        cast: the caller replaces the weights' storage (a cast) right after: fp32 weights on ``device``
            can then become the masters without a copy.

    After ``optimizer.step()`` (a step hook installed by :meth:`attach`) the model's weights are set to
    the masters rounded to their own dtype. :meth:`state_dict` / :meth:`load_state_dict` carry the masters
    through checkpoints, so a resumed run continues from the exact fp32 values.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        device: torch.device | str,
        *,
        grad_hooks: bool = True,
        cast: bool = False,
    ):
        self.params = list(params)
        self.device = torch.device(device)
        self.grad_hooks = grad_hooks
        # No copy when a weight is already fp32 on the masters' device and is about to be cast (its
        # old storage becomes the master); otherwise a copy.
        self.masters = [p.detach().to(device=self.device, dtype=torch.float32) for p in self.params]
        self.masters = [
            m.clone() if m.data_ptr() == p.data_ptr() and not cast else m
            for m, p in zip(self.masters, self.params, strict=True)
        ]
        self._handles = []
        if grad_hooks:
            for p, m in zip(self.params, self.masters, strict=True):
                self._handles.append(p.register_post_accumulate_grad_hook(self._mover(m)))

    @staticmethod
    def _mover(master: torch.Tensor):
        @torch.no_grad()
        def hook(p: torch.Tensor) -> None:
            _accumulate(master, p.grad)
            p.grad = None

        return hook

    @torch.no_grad()
    def collect_grads(self) -> None:
        """Add any gradient still on the model's parameters into the fp32 buffers (and free it)."""
        for p, m in zip(self.params, self.masters, strict=True):
            if p.grad is not None:
                _accumulate(m, p.grad)
                p.grad = None

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Model weights <- masters, rounded to each weight's dtype."""
        for p, m in zip(self.params, self.masters, strict=True):
            src = m if m.device == p.device else m.to(p.dtype)
            p.copy_(src, non_blocking=src.device.type == "cpu" and src.is_pinned())

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Collect stray gradients before each step of ``optimizer`` and refresh the model after it."""
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.collect_grads())
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self.copy_to_model())

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        """The fp32 masters, for checkpoints (``accelerator.register_for_checkpointing(master)``)."""
        return {"master_weights": self.masters}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        """Restore the masters of a checkpoint and refresh the model's weights from them."""
        masters = state["master_weights"]
        if len(masters) != len(self.masters):
            raise ValueError(
                f"checkpoint holds {len(masters)} master weights, the model has {len(self.masters)}"
            )
        with torch.no_grad():
            for m, saved in zip(self.masters, masters, strict=True):
                m.copy_(saved)
        self.copy_to_model()

    def named_state(self, names: list[str]) -> dict[str, torch.Tensor]:
        """{name: fp32 master} for saving the trained model at full precision."""
        return dict(zip(names, self.masters, strict=True))


def _same_device(a: torch.device, b: torch.device) -> bool:
    # accelerate names the CPU of a multi-process CPU run "cpu:0"; a CPU tensor's device is "cpu".
    return a.type == b.type and (a.type == "cpu" or a.index == b.index)


def _accumulate(master: torch.Tensor, grad: torch.Tensor) -> None:
    g = grad.to(device=master.device)
    if master.grad is None:
        master.grad = g.to(torch.float32)
    else:
        master.grad.add_(g)


def _cast(params: list[nn.Parameter], dtype: torch.dtype) -> None:
    # Only the trainable weights: buffers such as the rotary inv_freq stay fp32.
    with torch.no_grad():
        for p in params:
            if p.dtype != dtype:
                p.data = p.data.to(dtype)


def _groups(groups, decays: list[float], tensors: list[torch.Tensor]) -> list[dict]:
    """Optimizer param groups over ``tensors`` (the parameters or their masters, in ``groups``' order)."""
    out, start = [], 0
    for (_, named), wd in zip(groups, decays, strict=True):
        out.append({"params": tensors[start : start + len(named)], "weight_decay": wd})
        start += len(named)
    return out


def _adamw(params, lr: float, **kwargs) -> torch.optim.Optimizer:
    # fused=True: one kernel per tensor group on CPU and GPU, no full-size temporaries (the foreach
    # path allocates a copy of the second moment for its square root).
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, **kwargs)


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    precision: str = "mixed",
    master_device: torch.device | str | None = None,
    grad_hooks: bool = True,
    engine: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.optim.Optimizer, MasterWeights | None, list[str]]:
    """The optimizer for ``model``'s trainable parameters.

    Args:
        optimizer: "adamw", or "sgd" (plain SGD: the update is ``-lr * gradient``; for equivalence tests).
        precision: "mixed" — AdamW updates fp32 weights: the model's own when they are fp32 and on
            ``master_device``, else fp32 masters on ``master_device`` (:class:`MasterWeights`);
            "pure-bf16" — ``optimi.AdamW`` with Kahan summation directly on the bf16 weights.
        master_device: where fp32 masters live (None: the device of the model's weights); "cpu" is the
            optimizer offload.
        grad_hooks: see :class:`MasterWeights`.
        engine: DeepSpeed / FSDP own the master weights and the offload: plain ``torch.optim.AdamW`` over
            the model's parameters, which the engine wraps or replaces.
        compute_dtype: cast the trainable weights to this dtype after the masters are taken from them, so
            masters of a model loaded in fp32 keep every bit (None: keep the weights' dtype).

    Returns:
        (optimizer, MasterWeights or None, names of the parameters it updates, in the masters' order).

    Raises:
        ValueError: unknown precision; pure-bf16 on a model whose trainable weights are not all bf16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"--optimizer must be adamw or sgd, got {optimizer!r}")
    if optimizer == "sgd" and precision == "pure-bf16":
        raise ValueError("--precision pure-bf16 is Kahan-compensated AdamW; use --optimizer adamw")

    def make(param_groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.SGD(param_groups, lr=lr) if optimizer == "sgd" else _adamw(param_groups, lr=lr)

    groups = [(kind, named) for kind, named in param_groups(model, weight_decay) if named]
    names = [n for _, named in groups for n, _ in named]
    params = [p for _, named in groups for _, p in named]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decays = [weight_decay if kind == "decay" else 0.0 for kind, _ in groups]
    if precision == "pure-bf16":
        if compute_dtype is not None:
            _cast(params, compute_dtype)
        bad = sorted({str(p.dtype) for p in params if p.dtype != torch.bfloat16})
        if bad:
            raise ValueError(
                f"--precision pure-bf16 needs bf16 weights (--dtype bf16), found {', '.join(bad)}"
            )
        if master_device is not None and not _same_device(torch.device(master_device), params[0].device):
            raise ValueError(
                "--precision pure-bf16 keeps its optimizer beside the weights; no optimizer offload"
            )
        from optimi import AdamW as KahanAdamW

        opt = KahanAdamW(
            _groups(groups, decays, params),
            lr=lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=weight_decay,
            kahan_sum=True,
            foreach=False,
            triton=params[0].is_cuda,
        )
        return opt, None, names
    if compute_dtype is not None and (engine or precision == "pure-bf16"):
        _cast(params, compute_dtype)
    if engine:
        return make(_groups(groups, decays, params)), None, names
    device = torch.device(master_device) if master_device is not None else params[0].device
    target = compute_dtype or params[0].dtype
    if target == torch.float32 and all(
        p.dtype == torch.float32 and _same_device(p.device, device) for p in params
    ):
        return make(_groups(groups, decays, params)), None, names
    cast = compute_dtype is not None and any(p.dtype != compute_dtype for p in params)
    master = MasterWeights(params, device, grad_hooks=grad_hooks, cast=cast)
    if compute_dtype is not None:
        _cast(params, compute_dtype)
    opt = make(_groups(groups, decays, master.masters))
    master.attach(opt)
    return opt, master, names
