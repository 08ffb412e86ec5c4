"""``python -m lr_train ARGS`` that also saves the gradients of the first optimizer step.

    python tests/dp_worker.py GRADS ARGS...                          one process
    accelerate launch ... tests/dp_worker.py GRADS ARGS...           many: one file per rank

Writes ``GRADS.rank<r>.pt``: {parameter name: full gradient}, reduced over processes, before clipping.
Everything else is the real command-line path, with one exception: accelerate selects FSDP only for GPU
process groups (``AcceleratorState``: FSDP is set inside the multi-GPU branch), so under an FSDP config
on a machine without GPUs this worker switches the CPU (gloo) group to FSDP after accelerate set it up.
accelerate's own FSDP2 code then shards the model with torch's ``fully_shard`` exactly as on GPUs.
"""

import os
import sys

import torch

import lr_train.training as training
from lr_train.cli import main


def _save_first_step(prefix: str):
    def on_grads(step: int, model: torch.nn.Module) -> None:
        if step != 1:
            return
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                g = p.grad
                grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        path = f"{prefix}.rank{int(os.environ.get('RANK', '0'))}.pt"
        torch.save(grads, path + ".tmp")
        os.replace(path + ".tmp", path)

    return on_grads


def _fsdp_on_cpu() -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    init = Accelerator.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.state.distributed_type == DistributedType.MULTI_CPU:
            # Both shared states: every new AcceleratorState() copies PartialState's distributed type.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
            AcceleratorState._shared_state["fsdp_plugin"] = FullyShardedDataParallelPlugin()

    Accelerator.__init__ = patched


if __name__ == "__main__":
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        _fsdp_on_cpu()
    real = training.train_stage
    on_grads = _save_first_step(sys.argv[1])
    training.train_stage = lambda *a, **k: real(*a, on_grads=on_grads, **k)
    main(sys.argv[2:])
