"""Training stages of the recipe (extend, anneal) with checkpoints and resume, on accelerate.

The same loop runs on one CPU, one GPU, or many GPUs under ``accelerate launch`` with an FSDP or
DeepSpeed config: the model is patched before ``accelerator.prepare`` so the fused kernels run inside
whatever wrapper the engine adds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from lr_train.checkpoint import atomic_dir, prune, step_dirs
from lr_train.offload import enable_checkpointing
from lr_train.optim import build_optimizer

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")
IGNORE_INDEX = -100
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StageConfig:
    """Settings of one training stage. ``lr`` peaks after ``warmup_steps`` then follows ``schedule``
    down to ``lr * min_lr_ratio`` at ``max_steps`` (constant keeps the peak)."""

    output: str
    max_steps: int
    lr: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    save_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    optimizer: str = "adamw"  # "adamw" | "sgd" (plain, no momentum: the update is -lr * gradient)
    gradient_checkpointing: bool = False
    log_every: int = 1
    precision: str = "mixed"  # "mixed": AdamW on fp32 (master) weights | "pure-bf16": Kahan-compensated bf16
    memory_plan: str = "none"  # "none" or a strategy of lr_train.memory.STRATEGIES (resolved, not "auto")
    compute_dtype: str | None = None  # cast the weights to this ("bf16", "fp16") after taking fp32 masters

    def validate(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError("warmup_steps must be in [0, max_steps]")
        if self.grad_accum < 1 or self.save_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("grad_accum, save_every and keep_checkpoints must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        from lr_train.memory import STRATEGIES
        from lr_train.optim import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.compute_dtype not in (None, *_DTYPES):
            raise ValueError(
                f"compute_dtype must be None or one of {sorted(_DTYPES)}, got {self.compute_dtype!r}"
            )
        if self.memory_plan not in ("none", *STRATEGIES):
            raise ValueError(f"memory_plan must be none or one of {STRATEGIES}, got {self.memory_plan!r}")


def lr_factor(step: int, cfg: StageConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    shape = 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def train_stage(
    model,
    batches: Callable[[int, int, int], Iterator[dict[str, torch.Tensor]]],
    cfg: StageConfig,
    *,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    save_extra: Callable[[str], None] | None = None,
    on_grads: Callable[[int, torch.nn.Module], None] | None = None,
) -> dict:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps; resume from the newest checkpoint under
    ``cfg.output/checkpoints`` if one exists. ``batches(start, rank, world)`` yields this process's
    micro-batches (model kwargs incl. ``labels`` [1, T]) from its micro-batch number ``start`` on —
    deterministic, so a resumed run sees the same data as an uninterrupted one.

    The loss of an optimizer step is the sum of the token losses of its ``grad_accum`` micro-batches on
    every process, divided by the number of target tokens in all of them: N processes with ``grad_accum``
    micro-batches each compute the gradients of one process with ``N * grad_accum`` micro-batches.

    Writes ``cfg.output/model`` (save_pretrained, atomically; ``save_extra(folder)`` may add files such as
    the tokenizer) and ``cfg.output/train_log.jsonl`` (one row per step, over all processes: ``loss`` as
    above, the ``lr`` the step used, its input ``tokens``, and ``tokens_per_s`` since this run started);
    returns a summary dict. ``on_grads(step, model)`` (diagnostics, tests) sees the unwrapped model once
    the gradients of optimizer step ``step`` (1-based) are complete: reduced over processes, not clipped
    (with fp32 master weights for a bf16/fp16 model they have moved into the masters by then).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg.validate()
    set_seed(cfg.seed)
    acc = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        cpu=_cpu_processes(),
        # accelerate would step the scheduler once per process per optimizer step, assuming a step count
        # divided by the world size; max_steps counts global optimizer steps, so the loop steps it itself.
        step_scheduler_with_optimizer=False,
    )
    _check_launch(acc)
    master_device, grad_hooks, engine = _apply_memory_plan(model, cfg, acc)
    model.train()
    optimizer, master, master_names = build_optimizer(
        model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        precision=cfg.precision,
        master_device=master_device,
        grad_hooks=grad_hooks,
        engine=engine,
        compute_dtype=_DTYPES[cfg.compute_dtype] if cfg.compute_dtype else None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    if master is not None:
        acc.register_for_checkpointing(master)  # the fp32 masters travel with every checkpoint

    ckpt_root = os.path.join(cfg.output, "checkpoints")
    start_step = 0
    existing = step_dirs(ckpt_root)
    if existing:
        start_step, path = existing[-1]
        acc.load_state(path)
        acc.print(f"resumed from {path} (step {start_step})")
    if start_step >= cfg.max_steps and os.path.isdir(os.path.join(cfg.output, "model")):
        acc.print(f"{cfg.output}: already trained for {cfg.max_steps} steps")
        return _read_summary(cfg.output)

    log_path = os.path.join(cfg.output, "train_log.jsonl")
    if acc.is_main_process:
        os.makedirs(cfg.output, exist_ok=True)
        _truncate_log(log_path, start_step)
    stream = batches(start_step * cfg.grad_accum, acc.process_index, acc.num_processes)
    bar = tqdm(
        total=cfg.max_steps, initial=start_step, desc="train", disable=not (progress and acc.is_main_process)
    )
    # accelerate divides each micro-batch's loss by grad_accum and the engine (DDP, FSDP, DeepSpeed)
    # averages gradients over processes; the loss below is already normalised globally, so undo both.
    scale = cfg.grad_accum * acc.num_processes
    t0 = time.perf_counter()
    tokens = 0
    last = {}
    for step in range(start_step, cfg.max_steps):
        micro = [_next_batch(stream) for _ in range(cfg.grad_accum)]
        counts = torch.tensor(
            [sum(_target_count(b) for b in micro), sum(int(b["input_ids"].numel()) for b in micro)],
            dtype=torch.float64,
            device=acc.device,
        )
        n_targets, n_tokens = (int(x) for x in acc.reduce(counts, "sum").tolist())
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        for batch in micro:
            batch = {k: v.to(acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with acc.accumulate(model):
                # Sum of this micro-batch's token losses / the step's targets on all processes (a step
                # without any target has a zero loss, not 0/0).
                out = model(**batch, num_items_in_batch=max(n_targets, 1))
                acc.backward(out.loss * scale)
                if acc.sync_gradients:
                    if master is not None:
                        master.collect_grads()  # the fp32 gradients are the ones the step uses
                    if on_grads is not None:
                        on_grads(step + 1, acc.unwrap_model(model))
                    if cfg.max_grad_norm > 0:
                        clip = master.masters if master is not None else model.parameters()
                        acc.clip_grad_norm_(clip, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += out.loss.detach().double()
        lr = scheduler.get_last_lr()[0]
        if not optimizer.step_was_skipped:  # fp16 loss scaling skips steps whose gradients overflowed
            scheduler.step()
        tokens += n_tokens
        last = {
            "step": step + 1,
            "loss": float(acc.reduce(loss_sum, "sum")),
            "lr": lr,
            "tokens": n_tokens,
            "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9),
        }
        if acc.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps(last) + "\n")
            if on_log is not None and (step + 1) % cfg.log_every == 0:
                on_log(last)
        bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
        bar.update(1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.max_steps:
            _save_checkpoint(acc, ckpt_root, step + 1, cfg.keep_checkpoints)
    bar.close()
    acc.wait_for_everyone()
    summary = {"config": asdict(cfg), "final": last}
    # Under FSDP and ZeRO-3 gathering the full weights is a collective: every process takes part.
    state_dict = acc.get_state_dict(model)
    if acc.is_main_process:
        with atomic_dir(os.path.join(cfg.output, "model"), overwrite=True) as tmp:
            if master is not None:
                state_dict.update(master.named_state(master_names))  # save what the optimizer updated: fp32
            acc.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
            if master is not None:
                _mark_fp32(tmp)
            with open(os.path.join(tmp, "lr_train_summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
            if save_extra is not None:
                save_extra(tmp)
    acc.wait_for_everyone()
    return summary


def _next_batch(stream: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    try:
        return next(stream)
    except StopIteration as e:
        raise ValueError("the data ran out before max_steps; prepare more data or lower max_steps") from e


def _target_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss scores: HF causal LMs score ``labels[..., t + 1]`` at position t."""
    if "shift_labels" in batch:
        return int((batch["shift_labels"] != IGNORE_INDEX).sum())
    return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())


def _cpu_processes() -> bool:
    """True for a multi-process launch on a machine without GPUs: accelerate joins CPU processes (gloo)
    only when told ``cpu=True``; otherwise each process would train alone on its share of the data."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accel = getattr(torch, "accelerator", None)
    return not (accel.is_available() if accel is not None else torch.cuda.is_available())


def _check_launch(acc) -> None:
    """Fail before training when the launch asked for something accelerate did not set up."""
    from accelerate.utils import DistributedType

    world = os.environ.get("WORLD_SIZE")
    if world is not None and int(world) != acc.num_processes:
        raise ValueError(
            f"launched as {world} processes but accelerate joined {acc.num_processes}; "
            "check the launcher and the accelerate config"
        )
    for env, kind, name in (
        ("ACCELERATE_USE_FSDP", DistributedType.FSDP, "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, "DeepSpeed"),
    ):
        if os.environ.get(env, "false").lower() == "true" and acc.distributed_type != kind:
            raise ValueError(
                f"the accelerate config asks for {name} but accelerate set up {acc.distributed_type.value} "
                f"(accelerate runs {name} on GPUs only; this run's device is {acc.device.type})"
            )


def _apply_memory_plan(model, cfg: StageConfig, acc) -> tuple[torch.device | None, bool, bool]:
    """Checkpointing (with offload) as the plan says; returns (where fp32 master weights live, whether
    gradients move into them from backward hooks, whether DeepSpeed/FSDP owns precision and offload)."""
    from accelerate.utils import DistributedType

    plan = cfg.memory_plan
    level = ("none", "plain", "checkpoint", "offload-activations", "offload-optimizer", "offload-params")
    k = level.index(plan)
    engine = acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    if plan == "offload-params" and not _deepspeed_offloads_params(acc):
        raise ValueError(
            "--memory-plan offload-params streams the weights from the CPU with DeepSpeed ZeRO-3: run under "
            "accelerate launch --config_file configs/accelerate/deepspeed_zero3_offload.yaml"
        )
    if cfg.gradient_checkpointing or k >= level.index("checkpoint"):
        enable_checkpointing(model, offload=k >= level.index("offload-activations"))
    if engine:
        # DeepSpeed / FSDP keep their own fp32 master weights and offload: the optimizer is plain AdamW.
        if cfg.precision != "mixed":
            raise ValueError("--precision pure-bf16 is for single-process and DDP runs, not DeepSpeed/FSDP")
        return None, False, True
    master_device = torch.device("cpu") if k >= level.index("offload-optimizer") else acc.device
    # DDP reduces .grad after backward; moving gradients away inside backward would hide them from it.
    return master_device, acc.num_processes == 1, False


def _deepspeed_offloads_params(acc) -> bool:
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        return False
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    return zero.get("stage") == 3 and zero.get("offload_param", {}).get("device") == "cpu"


def _mark_fp32(folder: str) -> None:
    # save_pretrained records the compute dtype; the weights written are the fp32 masters.
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["dtype"] = "float32"
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def packed_batches(dataset, tokens_per_batch: int, seed: int = 0):
    """``batches`` for ``train_stage`` from a ``PreparedDataset``: seeded packed batches, epoch after epoch.

    Global micro-batch ``i`` goes to rank ``i % world``; a process's ``start`` counts its own micro-batches.
    """
    from lr_train.data import PackedBatchSampler, PackedCollator

    if len(dataset) == 0:
        raise ValueError(f"dataset {getattr(dataset, 'folder', '')} holds no samples")
    sampler = PackedBatchSampler(dataset.lengths, tokens_per_batch, shuffle=True, seed=seed)
    collate = PackedCollator()

    def batches(start: int, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        index, epoch = 0, 0
        first = start * world + rank
        while True:
            sampler.set_epoch(epoch)
            for batch in sampler:
                if index >= first and (index - rank) % world == 0:
                    yield collate(dataset.samples(batch))
                index += 1
            epoch += 1

    return batches


def _save_checkpoint(acc, root: str, step: int, keep: int) -> None:
    final = os.path.join(root, f"step-{step:08d}")
    tmp = f"{final}.partial"
    if acc.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(tmp)
    acc.wait_for_everyone()
    if acc.is_main_process:
        os.replace(tmp, final)
        prune(root, keep)
    acc.wait_for_everyone()


def _truncate_log(path: str, step: int) -> None:
    # A resumed run rewrites the log from its checkpoint on, so the log never holds steps twice.
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(rows)
    os.replace(path + ".tmp", path)


def _read_summary(output: str) -> dict:
    with open(os.path.join(output, "model", "lr_train_summary.json")) as f:
        return json.load(f)
