"""Precision of the weight updates: fp32 master weights by default, Kahan-compensated pure bf16 on request,
and the optimizer offload (masters on the CPU) equal to masters beside the weights."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from lr_train import patch
from lr_train.optim import build_optimizer
from lr_train.training import StageConfig, train_stage

VOCAB = 96
STEPS = 20
LR = 5e-6  # the anneal stage's learning rate


def _model(dtype=torch.bfloat16, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    patch(model, backend="torch")
    return model


def _batches(start, rank=0, world=1):
    # every token id in every batch, so every embedding row gets a gradient; micro-batch i is a pure
    # function of i, as train_stage's resume needs
    i = start
    while True:
        g = torch.Generator().manual_seed(1000 + i)
        ids = torch.cat([torch.randperm(VOCAB, generator=g), torch.randint(0, VOCAB, (32,), generator=g)])
        yield {"input_ids": ids[None], "labels": ids[None].clone()}
        i += 1


def _initial(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def _changed_share(before, after) -> float:
    changed = sum(int((after[n].float() != before[n]).sum()) for n in before)
    return changed / sum(t.numel() for t in before.values())


def _train(tmp_path, model, steps=STEPS, **kw):
    kw.setdefault("lr", LR)
    kw.setdefault("save_every", steps)
    cfg = StageConfig(output=str(tmp_path), max_steps=steps, **kw)
    train_stage(model, _batches, cfg, progress=False)
    return load_file(os.path.join(tmp_path, "model", "model.safetensors"))


def _manual(model, **kw):
    """20 steps of the loop train_stage runs, with build_optimizer's optimizer (or plain AdamW)."""
    if kw.pop("plain_adamw", False):
        # what `--dtype bf16 --mixed-precision no` did before: AdamW updating the bf16 weights in place
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    else:
        opt, _, _ = build_optimizer(model, lr=LR, **kw)
    stream = _batches(0)
    for _ in range(STEPS):
        model(**next(stream)).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


def test_default_master_weights_keep_small_updates_pure_bf16_loses_them(tmp_path):
    model = _model()
    before = _initial(model)
    saved = _train(tmp_path / "mixed", model)
    assert all(t.dtype == torch.float32 for t in saved.values())  # the fp32 masters are what is saved
    with open(tmp_path / "mixed" / "model" / "config.json") as f:
        assert json.load(f)["dtype"] == "float32"
    default_share = _changed_share(before, saved)

    plain = _model()
    _manual(plain, plain_adamw=True)
    plain_share = _changed_share(before, dict(plain.named_parameters()))
    print(f"weights changed in {STEPS} steps: fp32 masters {default_share:.2%}, pure bf16 {plain_share:.2%}")

    assert default_share > 0.90, default_share
    assert plain_share < 0.20, plain_share


def test_kahan_bf16_tracks_the_fp32_trajectory():
    reference = _model(dtype=torch.float32)  # the same bf16 init, trained in fp32
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    _manual(reference)
    fp32 = {n: p.detach() for n, p in reference.named_parameters()}

    kahan = _model()
    before = _initial(kahan)
    opt = _manual(kahan, precision="pure-bf16")
    plain = _model()
    _manual(plain, plain_adamw=True)

    def err(weights):
        return sum(float((w.detach().float() - fp32[n]).abs().sum()) for n, w in weights.items())

    named = dict(kahan.named_parameters())
    effective = {n: p.detach().float() + opt.state[p]["kahan_comp"].float() for n, p in named.items()}
    rounded = {n: w.to(torch.bfloat16) for n, w in fp32.items()}
    plain_w = {n: p.detach() for n, p in plain.named_parameters()}
    # Kahan keeps what plain bf16 rounds away: its bf16 weights are as close to fp32 training as bf16
    # rounding allows, and with the compensation far closer than plain bf16
    assert err(named) < 1.2 * err(rounded), (err(named), err(rounded))
    assert err(effective) < 0.2 * err(plain_w), (err(effective), err(plain_w))
    assert _changed_share(before, named) > 2 * _changed_share(before, plain_w)


def test_pure_bf16_refuses_fp32_weights():
    with pytest.raises(ValueError, match="pure-bf16 needs bf16 weights"):
        build_optimizer(_model(dtype=torch.float32), lr=1e-3, precision="pure-bf16")


def test_optimizer_offload_equals_adamw_on_the_weights(tmp_path):
    """offload-optimizer (separate fp32 masters on the CPU, gradients moved out by backward hooks and
    accumulated in fp32 over micro-batches, AdamW stepping the masters) trains an fp32 model to the same
    bits as AdamW on the model's own weights."""
    runs = {}
    for plan in ("checkpoint", "offload-optimizer"):
        model = _model(dtype=torch.float32)
        runs[plan] = _train(tmp_path / plan, model, steps=3, memory_plan=plan, grad_accum=2, weight_decay=0.1)
    assert sum(
        int((runs["checkpoint"][n] != _model(torch.float32).state_dict()[n]).sum())
        for n in runs["checkpoint"]
    )
    for name, t in runs["checkpoint"].items():
        torch.testing.assert_close(runs["offload-optimizer"][name], t, rtol=0, atol=0, msg=name)


def test_resume_with_master_weights_equals_uninterrupted(tmp_path):
    kw = dict(grad_accum=2, lr=1e-3, save_every=2)
    full = _train(tmp_path / "full", _model(), steps=4, **kw)
    _train(tmp_path / "cut", _model(), steps=2, **kw)
    resumed = _train(tmp_path / "cut", _model(), steps=4, **kw)
    for name, t in full.items():
        torch.testing.assert_close(resumed[name], t, rtol=0, atol=0, msg=name)
