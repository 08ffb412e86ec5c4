"""Memory plan: how many bytes one training step holds, on the GPU and on the CPU, per strategy.

The figures are tensor bytes, counted from what the code of this package allocates and saves (they are
what ``torch.cuda.max_memory_allocated`` measures, not what ``nvidia-smi`` shows): a patched model
(``lr_train.patch``) whose attention saves only ``q, k, v, o`` and the fp32 log-sum-exp
(``lk.varlen_attention``, Triton path) and whose loss never holds the ``[T, V]`` logits
(``lk.fused_linear_cross_entropy``: one fp32 ``[c, V]`` chunk plus the finished gradients of the hidden
states and of the LM head, which it makes in the forward pass).

Strategies, each adding to the one before; :func:`plan` picks the first that fits:

==================== ==================================================================================
plain                everything on the GPU, every layer keeps its activations for the backward pass
checkpoint           gradient checkpointing: a layer keeps only its input; the backward pass recomputes
                     one layer at a time
offload-activations  the checkpointed layer inputs go to pinned CPU memory during the forward pass and
                     come back one layer at a time in the backward pass
offload-optimizer    the fp32 master weights, their gradients (accumulated in fp32) and the AdamW state
                     live on the CPU; the AdamW step runs there; the GPU holds the compute-dtype weights
offload-params       the compute-dtype weights live on the CPU too and are streamed to the GPU layer by
                     layer (DeepSpeed ZeRO-3 with parameter offload)
==================== ==================================================================================

Precision (see ``lr_train.optim``): by default the optimizer updates fp32 master weights and the model
computes in its own dtype (bf16 on GPUs); ``precision="pure-bf16"`` keeps only bf16 weights, with
Kahan-compensated AdamW (``optimi``), whose bf16 moments and compensation take 6 bytes per parameter.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

STRATEGIES = ("plain", "checkpoint", "offload-activations", "offload-optimizer", "offload-params")
PRECISIONS = ("mixed", "pure-bf16")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
PRESETS_DIR = os.path.join(os.path.dirname(__file__), "assets", "configs")

# Headroom kept free on the GPU when deciding what fits: the CUDA context, cuBLAS/Triton workspaces and
# allocator fragmentation are not tensor bytes, so a plan that fills the card to the byte would not run.
GPU_RESERVED_BYTES = 2 * 2**30
GPU_USABLE_FRACTION = 0.95
# The fused loss sizes its fp32 logits chunk from a budget (lr_kernels/cross_entropy/chunked.py); on a
# GPU the budget is min(2 GiB, free / 4), i.e. the cap whenever >= 8 GiB are free, which the plan assumes.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}


def parse_size(text: str | int, *, name: str = "size") -> int:
    """Bytes from ``"80GiB"``, ``"80GB"`` (10**9), ``"80G"`` (= GiB), ``"512MiB"``, ``"1.5TiB"`` or a count.

    Raises ValueError naming ``name`` when the text does not parse or is not positive.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{name}: cannot parse {text!r} as a memory size (e.g. 80GiB, 80GB, 512MiB)")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = int(value * _UNITS[unit])
    if not math.isfinite(value) or size <= 0:
        raise ValueError(f"{name}: a memory size must be > 0, got {text!r}")
    return size


def format_bytes(n: float) -> str:
    """``n`` bytes as GiB/MiB/KiB with one decimal (GiB for >= 1 GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a decoder-only model (from its config and a meta-device build).

    ``params_*`` count elements: ``params_layer`` one decoder layer, ``params_embed`` the input embedding,
    ``params_head`` the LM head (0 when tied to the embedding), ``params`` everything.
    """

    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: int
    params_layer: int
    params_embed: int
    params_head: int
    qk_norm: bool = False

    @property
    def largest_tensor(self) -> int:
        """Elements of the largest single parameter (embedding / LM head, or an MLP matrix)."""
        return max(self.params_embed, self.params_head, self.hidden * self.intermediate)


def presets() -> list[str]:
    """Names of the model configs shipped with the package (``plan --model NAME``)."""
    return sorted(f[: -len(".json")] for f in os.listdir(PRESETS_DIR) if f.endswith(".json"))


def load_config(model: str):
    """A transformers config from a preset name, a config.json file, a model folder or a hub name.

    Raises ValueError naming ``--model`` when none of these can be read (no download is attempted past
    what ``AutoConfig.from_pretrained`` finds in the local cache when offline).
    """
    from transformers import AutoConfig

    path = os.path.join(PRESETS_DIR, f"{model}.json") if model in presets() else model
    try:
        if os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict) or "model_type" not in data:
                raise ValueError("it holds no model_type")
            return AutoConfig.for_model(data.pop("model_type"), **data)
        if os.path.isdir(path) or "/" in model:
            return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--model: cannot read a model config from {model!r}: {first}") from None
    raise ValueError(
        f"--model: unknown model {model!r}; give a preset ({', '.join(presets())}), a config.json, "
        "a model folder or a hub name (org/name)"
    )


def model_shape(config, name: str = "") -> ModelShape:
    """Count parameters on the meta device (no memory, no weights) and read the layer geometry."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from lr_train.models import model_head_dim

    try:
        # init_empty_weights as well: it moves parameters to meta as modules register them, even when
        # torch.empty has been wrapped (the meta device context only sees torch's own constructors)
        with torch.device("meta"), init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"--model: cannot build {name or config.model_type} from its config: {exc}"
        ) from None
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"--model: {type(model).__name__} is not a decoder stack the plan knows")
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    return ModelShape(
        name=name or getattr(config, "_name_or_path", "") or config.model_type,
        model_type=config.model_type,
        hidden=int(config.hidden_size),
        layers=len(layers),
        heads=int(config.num_attention_heads),
        kv_heads=int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        head_dim=model_head_dim(config),
        intermediate=int(config.intermediate_size),
        vocab=int(embed.shape[0]),
        params=sum(p.numel() for p in model.parameters()),
        params_layer=sum(p.numel() for p in layers[0].parameters()),
        params_embed=embed.numel(),
        params_head=0 if tied or head is None else head.weight.numel(),
        qk_norm=hasattr(layers[0].self_attn, "q_norm"),
    )


def load_model_shape(model: str) -> ModelShape:
    """``model_shape(load_config(model))`` with the name the user gave."""
    return model_shape(load_config(model), name=model)


# ---------------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class Settings:
    """Everything besides the model that the bytes depend on.

    Attributes:
        train_length: tokens per micro-batch (T), packed.
        dtype: the weights the model computes with ("bf16", "fp16", "fp32").
        precision: "mixed" (fp32 master weights, the default) or "pure-bf16".
        device: "cuda" or "cpu": the fused loss multiplies in fp32 on CPUs (an fp32 copy of a
            low-precision LM head) and in the weights' dtype on GPUs (an extra low-precision gradient chunk).
        grad_accum: micro-batches per optimizer step; > 1 scales the loss, so the loss's backward makes
            new gradient tensors instead of handing back the ones saved in the forward pass.
        ce_budget: bytes of the fused loss's logits chunk budget (None: the kernel's default for device).
    """

    train_length: int
    dtype: str = "bf16"
    precision: str = "mixed"
    device: str = "cuda"
    grad_accum: int = 2
    ce_budget: int | None = None

    def validate(self) -> None:
        if isinstance(self.train_length, bool) or not isinstance(self.train_length, int):
            raise ValueError(f"--train-length must be an integer, got {self.train_length!r}")
        if self.train_length <= 0:
            raise ValueError(f"--train-length must be > 0, got {self.train_length}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"--dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "pure-bf16" and self.dtype != "bf16":
            raise ValueError(f"--precision pure-bf16 needs --dtype bf16, got {self.dtype}")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be cuda or cpu, got {self.device!r}")
        if self.grad_accum < 1:
            raise ValueError(f"--grad-accum must be >= 1, got {self.grad_accum}")


def strategies_for(settings: Settings) -> tuple[str, ...]:
    """The strategies that apply: pure-bf16 keeps its Kahan-compensated optimizer on the GPU."""
    if settings.precision == "pure-bf16":
        return STRATEGIES[:3]
    return STRATEGIES


def separate_master(settings: Settings, strategy: str) -> bool:
    """Whether the optimizer keeps fp32 master copies apart from the weights the model computes with."""
    if settings.precision == "pure-bf16":
        return False
    return settings.dtype != "fp32" or STRATEGIES.index(strategy) >= STRATEGIES.index("offload-optimizer")


@dataclass
class Phase:
    """Bytes alive at one moment of the step, by component, on each side."""

    name: str
    gpu: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, int] = field(default_factory=dict)

    @property
    def gpu_total(self) -> int:
        return sum(self.gpu.values())

    @property
    def cpu_total(self) -> int:
        return sum(self.cpu.values())


@dataclass
class StrategyEstimate:
    """One strategy's peak bytes. ``gpu`` / ``cpu``: components at the GPU's / CPU's peak phase."""

    strategy: str
    gpu_peak: int
    cpu_peak: int
    total_peak: int
    gpu_phase: str
    cpu_phase: str
    gpu: dict[str, int]
    cpu: dict[str, int]
    workspaces: dict[str, int] = field(default_factory=dict)
    fits: bool | None = None


COMPONENTS = (
    "weights",
    "grads",
    "optimizer",
    "master",
    "checkpoints",
    "activations",
    "attention_ws",
    "loss_ws",
    "other",
)


def _ce_chunk_rows(T: int, V: int, settings: Settings, extra_row_bytes: int) -> int:
    from lr_kernels.cross_entropy.chunked import CPU_CHUNK_BYTES, CUDA_CHUNK_BYTES

    budget = settings.ce_budget
    if budget is None:
        budget = CUDA_CHUNK_BYTES if settings.device == "cuda" else CPU_CHUNK_BYTES
    rows = max(1, budget // (4 * V + extra_row_bytes))
    if rows >= 64:
        rows -= rows % 16
    return max(1, min(rows, T))


def _layer_terms(m: ModelShape, T: int, b: int, attention: str) -> dict[str, int]:
    """Bytes one decoder layer saves for its backward pass, by part (see the module docstring).

    ``attention="torch"`` (the CPU path of ``lk.varlen_attention``) saves the rotated q and k instead of the
    projections (same size) and also the fp32 cos/sin it rotated with.
    """
    d, H, Hkv, D, inter = m.hidden, m.heads, m.kv_heads, m.head_dim, m.intermediate
    # RMSNorm saves its fp32 input (the input itself when it is fp32) and the normalised tensor in the
    # model dtype, plus 1/rms; its output is saved by the projections that read it.
    norm = (4 + b) * T * d + 4 * T
    attn = b * T * (H + 2 * Hkv) * D + b * T * H * D + 4 * H * T  # q, k, v, o + fp32 lse [H, T]
    if attention == "torch":
        attn += 4 * T * D
    if m.qk_norm:
        attn += (4 + b) * T * (H + Hkv) * D + 4 * T * (H + Hkv)
    return {
        "attn_in": norm + b * T * d,  # input norm + its output (read by q/k/v projections)
        "attn": attn,
        "mlp_in": norm + b * T * d,
        "mlp": 4 * b * T * inter,  # gate, silu(gate), up, silu(gate) * up
    }


def _estimate_phases(m: ModelShape, s: Settings, strategy: str) -> list[Phase]:
    T, d, V, L = s.train_length, m.hidden, m.vocab, m.layers
    b = DTYPE_BYTES[s.dtype]
    k = STRATEGIES.index(strategy)
    ckpt, off_act, off_opt, off_par = k >= 1, k >= 2, k >= 3, k >= 4
    P = m.params
    master = separate_master(s, strategy)
    pure = s.precision == "pure-bf16"

    gpu_static: dict[str, int] = {}
    cpu_static: dict[str, int] = {}
    if off_par:
        # ZeRO-3 streams layer by layer: the working set is the current and the prefetched module.
        gpu_static["weights"] = 2 * b * max(m.params_layer, m.params_embed, m.params_head)
        cpu_static["weights"] = b * P
    else:
        gpu_static["weights"] = b * P
    opt_side = cpu_static if off_opt else gpu_static
    if pure:
        gpu_static["grads"] = b * P
        gpu_static["optimizer"] = 3 * b * P  # optimi AdamW: bf16 exp_avg, exp_avg_sq, Kahan compensation
    else:
        # With master weights every gradient is added into an fp32 buffer beside its master as soon as
        # backward produces it; without, the fp32 weights keep their fp32 .grad.
        opt_side["grads"] = 4 * P
        opt_side["optimizer"] = 8 * P
        if master:
            opt_side["master"] = 4 * P
    # A gradient of the model dtype exists between its creation and its move into the fp32 buffer.
    transient_grad = b * m.largest_tensor if master else 0

    lt = _layer_terms(m, T, b, "triton" if s.device == "cuda" else "torch")
    layer_saved = sum(lt.values())
    batch = 40 * T  # int64 input ids, labels, shifted labels, positions (x2)
    rope = 2 * b * T * m.head_dim  # the model's own cos/sin, kept by every checkpointed layer's kwargs
    final_norm = (4 + b) * T * d + 4 * T

    # Saved across layers while the forward pass runs to its end.
    if ckpt:
        inputs = L * b * T * d
        on_gpu_ckpt = 0 if off_act else inputs
        cpu_ckpt = inputs if off_act else 0
        saved_layers = on_gpu_ckpt + rope
    else:
        cpu_ckpt = 0
        saved_layers = L * layer_saved

    # The fused loss (lr_kernels.cross_entropy.chunked.linear_ce_chunked), reduction="mean".
    gpu_mm = s.device == "cuda"
    mm_b = b if gpu_mm else 4
    low_dz = gpu_mm and b != 4
    c = _ce_chunk_rows(T, V, s, 2 * V if low_dz else 0)
    ce_fwd = (
        4 * c * V  # fp32 logits chunk
        + (2 * c * V if low_dz else 0)  # its gradient in the GEMM dtype
        + (4 * V * d if mm_b != b else 0)  # LM head cast for the GEMMs
        + 4 * V * d  # fp32 accumulator of the LM-head gradient
        + (b * V * d if b != 4 else 0)  # ... cast to the weights' dtype
        + b * T * d  # gradient of the hidden states
        + 4 * T  # per-token loss
        + 2 * mm_b * c * d  # the hidden chunk in the GEMM dtype and its gradient chunk
    )
    ce_saved = b * T * d + b * V * d
    ce_bwd = ce_saved + (ce_saved if s.grad_accum > 1 else 0)

    attn_bwd = (
        b * T * m.heads * m.head_dim * 2  # do, dq
        + 2 * b * T * m.kv_heads * m.head_dim  # dk, dv
        + 4 * m.heads * T  # delta
    )
    mlp_bwd = 2 * b * T * m.intermediate  # three [T, I] gradients live while one saved input is freed
    dy = b * T * d  # the gradient flowing down the residual stream

    phases: list[Phase] = []

    def phase(name: str, gpu_extra: dict[str, int], cpu_extra: dict[str, int] | None = None) -> None:
        g = dict(gpu_static)
        for key, v in gpu_extra.items():
            g[key] = g.get(key, 0) + v
        c_ = dict(cpu_static)
        if cpu_ckpt:
            c_["checkpoints"] = c_.get("checkpoints", 0) + cpu_ckpt
        for key, v in (cpu_extra or {}).items():
            c_[key] = c_.get(key, 0) + v
        phases.append(Phase(name, {k_: v for k_, v in g.items() if v}, {k_: v for k_, v in c_.items() if v}))

    # Saved layers (or their checkpointed inputs), the final norm and the batch, while the loss runs.
    top = {"checkpoints": saved_layers} if ckpt else {"activations": saved_layers}
    top["activations"] = top.get("activations", 0) + final_norm + batch
    phase("loss forward", {**top, "loss_ws": ce_fwd})
    phase("loss backward", {**top, "loss_ws": ce_bwd, "grads": transient_grad})
    # The last layer's backward pass (the first one to run) is where the most is alive.
    if ckpt:
        recompute = layer_saved - (b * T * d if b == 4 else 0)  # an fp32 input is the checkpoint itself
        back = {"checkpoints": saved_layers, "activations": recompute + batch}
        if off_act:
            back["activations"] += b * T * d  # the layer input, back from the CPU
    else:
        back = {"activations": saved_layers + batch}
    mlp_phase = dict(back)
    mlp_phase["activations"] += dy + mlp_bwd
    mlp_phase["grads"] = transient_grad
    phase("layer backward (mlp)", mlp_phase)
    attn_phase = dict(back)
    attn_phase["activations"] += dy - lt["mlp"] - lt["mlp_in"]
    attn_phase["attention_ws"] = attn_bwd
    attn_phase["grads"] = transient_grad
    phase("layer backward (attention)", attn_phase)
    # Embedding backward: a dense [V, d] gradient.
    phase("embedding backward", {"grads": b * m.params_embed + transient_grad, "activations": batch})
    return phases


def estimate(m: ModelShape, settings: Settings, strategy: str) -> StrategyEstimate:
    """Peak bytes of one training step (steady state: optimizer state already allocated) on GPU and CPU.

    On a CPU-only run both sides are the same memory: ``total_peak`` is the most alive at once.
    """
    settings.validate()
    if strategy not in strategies_for(settings):
        raise ValueError(
            f"--memory-plan: strategy {strategy!r} does not apply with --precision {settings.precision}; "
            f"choose from {', '.join(strategies_for(settings))}"
        )
    phases = _estimate_phases(m, settings, strategy)
    g = max(phases, key=lambda p: p.gpu_total)
    c = max(phases, key=lambda p: p.cpu_total)
    return StrategyEstimate(
        strategy=strategy,
        gpu_peak=g.gpu_total,
        cpu_peak=c.cpu_total,
        total_peak=max(p.gpu_total + p.cpu_total for p in phases),
        gpu_phase=g.name,
        cpu_phase=c.name,
        gpu=g.gpu,
        cpu=c.cpu,
        workspaces={k: max(p.gpu.get(k, 0) for p in phases) for k in ("attention_ws", "loss_ws")},
    )


def usable_gpu_bytes(gpu_memory: int) -> int:
    """What a plan may fill of a GPU with ``gpu_memory`` bytes (see GPU_RESERVED_BYTES)."""
    return int(gpu_memory * GPU_USABLE_FRACTION) - GPU_RESERVED_BYTES


@dataclass
class Plan:
    """Every strategy's estimate, the chosen one (None when nothing fits) and, then, what would fit."""

    model: ModelShape
    settings: Settings
    gpu_memory: int
    cpu_memory: int | None
    estimates: list[StrategyEstimate]
    chosen: str | None
    suggestions: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": asdict(self.model),
            "settings": asdict(self.settings),
            "gpu_memory": self.gpu_memory,
            "gpu_usable": usable_gpu_bytes(self.gpu_memory),
            "cpu_memory": self.cpu_memory,
            "chosen": self.chosen,
            "strategies": [asdict(e) for e in self.estimates],
            "suggestions": self.suggestions,
        }


def _fits(e: StrategyEstimate, gpu_memory: int, cpu_memory: int | None) -> bool:
    return e.gpu_peak <= usable_gpu_bytes(gpu_memory) and (cpu_memory is None or e.cpu_peak <= cpu_memory)


def plan(m: ModelShape, settings: Settings, gpu_memory: int, cpu_memory: int | None = None) -> Plan:
    """Estimate every strategy and pick the first (cheapest) that fits ``gpu_memory`` (and ``cpu_memory``).

    When none fits, ``suggestions`` names what would: the longest length that fits, the GPU memory the
    most offloaded strategy needs, and how many GPUs sequence parallelism needs at this length.
    """
    settings.validate()
    names = strategies_for(settings)
    estimates = [estimate(m, settings, s) for s in names]
    chosen = None
    for e in estimates:
        e.fits = _fits(e, gpu_memory, cpu_memory)
        if e.fits and chosen is None:
            chosen = e.strategy
    suggestions = [] if chosen else _suggestions(m, settings, gpu_memory, cpu_memory, names)
    return Plan(m, settings, gpu_memory, cpu_memory, estimates, chosen, suggestions)


def _suggestions(
    m: ModelShape, s: Settings, gpu_memory: int, cpu_memory: int | None, names: tuple[str, ...]
) -> list[str]:
    from dataclasses import replace

    out = []
    best = min((estimate(m, s, n) for n in names), key=lambda e: e.gpu_peak)
    need = best.gpu_peak
    gpu_needed = math.ceil((need + GPU_RESERVED_BYTES) / GPU_USABLE_FRACTION)
    out.append(f"more GPU memory: {best.strategy} needs a {format_bytes(gpu_needed)} GPU at this length")

    def fits_at(length: int) -> bool:
        t = replace(s, train_length=length)
        return any(_fits(estimate(m, t, n), gpu_memory, cpu_memory) for n in names)

    lo, hi = 0, s.train_length
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_at(mid) else (lo, mid)
    if lo > 0:
        out.append(f"a shorter length: up to --train-length {lo} fits")
    else:
        out.append("a shorter length does not help: the model's weights alone do not fit")
    # Sequence parallelism (Ulysses / ring attention) with ZeRO-3 over n GPUs: every per-token tensor
    # and every sharded model state divides by n.
    for n in (2, 4, 8, 16, 32, 64):
        per_gpu = math.ceil(s.train_length / n)
        t = replace(s, train_length=per_gpu)
        for name in names:
            e = estimate(m, t, name)
            static = sum(e.gpu.get(k, 0) for k in ("weights", "grads", "optimizer", "master"))
            sharded = e.gpu_peak - static + static / n if name != "offload-params" else e.gpu_peak
            cpu_ok = cpu_memory is None or e.cpu_peak / n <= cpu_memory
            if sharded <= usable_gpu_bytes(gpu_memory) and cpu_ok:
                out.append(f"sequence parallelism on {n} GPUs ({per_gpu} tokens each, {name}, ZeRO-3)")
                return out
    out.append("sequence parallelism does not help up to 64 GPUs")
    return out


# ---------------------------------------------------------------------------------------------------
# Output


_COLUMNS = (
    ("weights", "weights"),
    ("grads", "grads"),
    ("optimizer", "optim"),
    ("master", "master"),
    ("checkpoints", "ckpts"),
    ("activations", "activ"),
    ("attention_ws", "attn-ws"),
    ("loss_ws", "loss-ws"),
)


def format_plan(p: Plan) -> str:
    """The human-readable tables of ``python -m lr_train plan`` (GiB; components at each side's peak)."""
    s, m = p.settings, p.model
    out = [
        f"model {m.name}: {m.params / 1e9:.2f}B parameters, {m.layers} layers, hidden {m.hidden}, "
        f"heads {m.heads}/{m.kv_heads} (q/kv), intermediate {m.intermediate}, vocab {m.vocab}",
        f"{s.train_length} tokens per micro-batch; {s.dtype} weights, "
        + (
            "AdamW on fp32 master weights" if s.precision == "mixed" else "pure bf16, Kahan-compensated AdamW"
        ),
        f"GPU {format_bytes(p.gpu_memory)} (a plan may use {format_bytes(usable_gpu_bytes(p.gpu_memory))}), "
        + (f"CPU {format_bytes(p.cpu_memory)}" if p.cpu_memory else "CPU not limited (--cpu-memory)"),
    ]
    width = max(len(e.strategy) for e in p.estimates) + 2
    for side, title in (("gpu", "GPU"), ("cpu", "CPU")):
        out.append("")
        out.append(
            f"{title} GiB".ljust(width)
            + "".join(label.rjust(8) for _, label in _COLUMNS)
            + "peak".rjust(8)
            + "  at"
        )
        for e in p.estimates:
            parts = getattr(e, side)
            peak = e.gpu_peak if side == "gpu" else e.cpu_peak
            phase = e.gpu_phase if side == "gpu" else e.cpu_phase
            out.append(
                e.strategy.ljust(width)
                + "".join(_gib(parts.get(key, 0)).rjust(8) for key, _ in _COLUMNS)
                + _gib(peak).rjust(8)
                + f"  {phase if peak else '-'}"
            )
    ws = p.estimates[0].workspaces
    out.append("")
    out.append(
        f"workspaces, in their own phase: attention backward {format_bytes(ws['attention_ws'])} "
        f"(dq, dk, dv, do, delta); fused loss forward {format_bytes(ws['loss_ws'])} (one fp32 logits "
        "chunk, the LM-head and hidden-state gradients; never [T, V] logits)"
    )
    out.append("fits: " + ", ".join(f"{e.strategy} {'yes' if e.fits else 'no'}" for e in p.estimates))
    if p.chosen:
        out.append(f"choice: {p.chosen}  (train --memory-plan {p.chosen}, or --memory-plan auto)")
    else:
        out.append("nothing fits. What would:")
        out.extend(f"  - {t}" for t in p.suggestions)
    return "\n".join(out)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


# ---------------------------------------------------------------------------------------------------
# Measuring (CPU)


def cpu_peak_bytes(fn: Callable[[], Any], *, setup: Callable[[], Any] | None = None) -> tuple[int, Any]:
    """Peak bytes of live CPU tensors while ``fn()`` runs, and its result, measured with the torch profiler.

    Every allocation and free of torch's CPU allocator is a profiler event (``profile_memory=True``).
    ``setup()`` (building the model, a first step that allocates the optimizer state) runs inside the same
    session, so what it leaves alive is the baseline the peak of ``fn`` is counted on; the process's own
    start-up (imports, libraries) is not counted. Returns (peak bytes during ``fn``, ``fn()``).
    """
    import gc

    from torch.profiler import ProfilerActivity, profile, record_function

    # Tensors made before the session and freed inside it would count as negative bytes: collect the
    # garbage of earlier work first, and keep the cyclic collector from freeing it mid-measurement.
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            if setup is not None:
                setup()
            with record_function("lr_train.measured"):
                result = fn()
    finally:
        if enabled:
            gc.enable()
    events = prof.profiler.kineto_results.events()
    window = [e for e in events if e.name() == "lr_train.measured"]
    if not window:
        raise RuntimeError("the profiler recorded no window for the measured function")
    lo, hi = window[0].start_ns(), window[0].end_ns()
    allocs = sorted(
        (e for e in events if e.name() == "[memory]" and e.device_type().name == "CPU"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for e in allocs:
        live += e.nbytes()
        if lo <= e.start_ns() <= hi:
            peak = max(peak, live)
    return peak, result
