"""Two processes train exactly like one: data-parallel runs on the CPU (gloo) through the real CLI.

Every run is a subprocess: ``python -m lr_train train ...`` (one process) or ``accelerate launch
--config_file configs/accelerate/<file> --num_processes 2 ...`` (two), on the tiny Llama, the toy
tokenizer and a prepared set whose packed micro-batches hold different numbers of tokens. One process
takes 4 micro-batches per optimizer step, two take 2 each: the same global batch. Runs that must show the
first step's gradients go through tests/dp_worker.py (the same CLI plus a gradient dump).
"""

import glob
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from itertools import islice
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs", "accelerate")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")) + glob.glob(os.path.join(CONFIG_DIR, "*.yml")))
WORKER = os.path.join(ROOT, "tests", "dp_worker.py")
TOKENS_PER_BATCH = 256
ACCUM = 4  # micro-batches per optimizer step of the one-process run; N processes take ACCUM / N each
STEPS = 3
SGD = ("--optimizer", "sgd", "--lr", "0.1", "--schedule", "cosine")
ADAMW_LR = 1e-3
ADAMW = ("--optimizer", "adamw", "--lr", str(ADAMW_LR), "--schedule", "cosine", "--weight-decay", "0.1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(data, out, *, procs=1, config=None, grads=None, extra=()) -> subprocess.CompletedProcess:
    """One `train` run (``grads``: through the worker, which saves step 1's gradients to GRADS.rank<r>.pt)."""
    args = ["train", "--stage", "extend", "--model", "tiny-llama", "--tokenizer", "toy", "--data", data]
    args += [
        "--output",
        str(out),
        "--tokens-per-batch",
        str(TOKENS_PER_BATCH),
        "--grad-accum",
        str(ACCUM // procs),
    ]
    args += ["--max-steps", str(STEPS), "--save-every", "2", "--seed", "0", "--quiet", *extra]
    target = [WORKER, str(grads)] if grads is not None else ["-m", "lr_train"]
    cmd = [sys.executable, *target, *args]
    if procs > 1:
        launch = ["-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", str(procs)]
        cmd = [sys.executable, *launch, "--main_process_port", str(_free_port()), *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"{' '.join(res.args)}\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


def _weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "model", "model.safetensors"))


def _log(out) -> list[dict]:
    with open(os.path.join(out, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _grads(prefix, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(f"{prefix}.rank{rank}.pt")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("dp")


@pytest.fixture(scope="module")
def data(work) -> str:
    from lr_train.data import PreparedDatasetWriter
    from lr_train.toy import toy_corpus, toy_tokenizer

    tok = toy_tokenizer()
    folder = work / "data"
    folder.mkdir()
    writer = PreparedDatasetWriter(str(folder))
    for i, text in enumerate(toy_corpus(16, seed=5)):
        ids = tok(text)["input_ids"][: 17 + (i * 37) % 80]  # 17..96 tokens: packed batches differ in size
        writer.write(ids, list(range(len(ids))))
    writer.close({"settings": {"method": "full", "train_length": 96, "target_length": 96}})
    return str(folder)


def _micro_batches(data, n: int) -> list[dict]:
    from lr_train.data import PreparedDataset
    from lr_train.training import packed_batches

    return list(islice(packed_batches(PreparedDataset(data), TOKENS_PER_BATCH, seed=0)(0), n))


@pytest.fixture(scope="module")
def oracle(data):
    """Step 1 computed directly: the sum of the token losses of the step's micro-batches over their
    number of targets, from logits (not the fused loss the CLI trains with), and its gradients."""
    from lr_train import patch
    from lr_train.recipe import load_model
    from lr_train.toy import toy_tokenizer

    model = load_model("tiny-llama", tokenizer=toy_tokenizer(), target_length=96, seed=0)
    patch(model, backend="torch")
    total, n = torch.zeros(()), 0
    for batch in _micro_batches(data, ACCUM):
        targets = batch.pop("labels")[0, 1:]
        logits = model(**batch).logits[0, :-1].float()
        total = total + F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        n += int((targets != -100).sum())
    loss = total / n
    loss.backward()
    return SimpleNamespace(loss=loss.item(), grads={k: p.grad.clone() for k, p in model.named_parameters()})


@pytest.fixture(scope="module")
def one_sgd(data, work):
    out = work / "one-sgd"
    _ok(_train(data, out, grads=work / "one-sgd-grads", extra=SGD))
    return SimpleNamespace(out=out, grads=_grads(work / "one-sgd-grads", 0))


@pytest.fixture(scope="module")
def adamw_runs(data, work):
    one, two = work / "one-adamw", work / "two-adamw"
    _ok(_train(data, one, extra=ADAMW))
    _ok(_train(data, two, procs=2, config=os.path.join(CONFIG_DIR, "ddp.yaml"), extra=ADAMW))
    return SimpleNamespace(one=one, two=two)


def _assert_grads_close(actual: dict, expected: dict, what: str) -> float:
    """rtol 1e-5 (fp32). The atol, 1e-6 of the tensor's largest gradient, covers elements far below that
    scale (sums of cancelling terms): their round-off is relative to the terms, not to the result.
    Returns the largest |difference| / the tensor's largest gradient."""
    assert actual.keys() == expected.keys(), what
    worst = 0.0
    for name, g in expected.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(actual[name], g, rtol=1e-5, atol=1e-6 * scale, msg=f"{what}: {name}")
        worst = max(worst, float((actual[name] - g).abs().max()) / scale)
    return worst


def test_packed_micro_batches_hold_different_token_counts(data):
    targets = [int((b["labels"][0, 1:] != -100).sum()) for b in _micro_batches(data, ACCUM)]
    assert len(set(targets)) == ACCUM, targets  # else a mean of per-micro-batch means would be exact too


def test_one_process_step_is_token_weighted(oracle, one_sgd):
    worst = _assert_grads_close(one_sgd.grads, oracle.grads, "1 process vs direct")
    assert _log(one_sgd.out)[0]["loss"] == pytest.approx(oracle.loss, rel=1e-6)
    print(f"first-step gradients, 1 process vs direct: max |diff| / max |g| = {worst:.2e}")


def _config_kind(path: str) -> str:
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(path).distributed_type.value


def _check_config(path: str, procs: int) -> tuple[str, dict]:
    """accelerate parses the file, every engine option in it is one `accelerate launch` knows, and the
    launcher's own validation accepts it. Returns (distributed type, the processes' environment)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    cfg = load_config_from_file(path)
    parser = launch_command_parser()
    args = parser.parse_args(
        ["--config_file", path, "--num_processes", str(procs), "-m", "lr_train", "train"]
    )
    for section, prefix in ((cfg.fsdp_config, "fsdp_"), (cfg.deepspeed_config, "")):
        for key in section:
            name = key if key.startswith(prefix) else prefix + key
            assert hasattr(args, name), f"{os.path.basename(path)}: {key} is no accelerate launch option"
    args, defaults, _ = _validate_launch_command(args)
    kind = cfg.distributed_type.value
    if kind == "DEEPSPEED":
        # What `accelerate launch` sets before it builds the DeepSpeed processes' environment.
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        ds_file = cfg.deepspeed_config.get("deepspeed_config_file")
        if ds_file:
            with open(ds_file if os.path.isabs(ds_file) else os.path.join(ROOT, ds_file)) as f:
                json.load(f)
    else:
        env = prepare_multi_gpu_env(args)
    return kind, env


def _config_id(path: str) -> str:
    kind = _config_kind(path)
    mode = "2-vs-1" if kind in ("MULTI_GPU", "FSDP") else "checks-only"
    return f"{os.path.basename(path)}-{mode}"


@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_accelerate_config_trains_like_one_process(config, request, tmp_path):
    """Each shipped accelerate config runs `train` on 2 CPU processes (plain SGD, same global batch as
    one process): step 1's gradients match the direct computation, the weights after the last step and the
    logged loss/lr/tokens match the one-process run.

    DDP runs as is (gloo). FSDP: accelerate builds its FSDP plugin only for GPU process groups, so the
    worker switches the CPU group to FSDP; from there accelerate's own FSDP2 code shards the model
    (torch fully_shard, DTensor gradients, sharded checkpoints). DeepSpeed cannot start here: accelerate
    turns it off on the CPU (``AcceleratorState``: DeepSpeed only ``if not cpu``), and its launcher
    needs the deepspeed package; the test checks the config and the launcher's environment, and that
    exactly this is what is missing.
    """
    kind, env = _check_config(config, 2)
    data = request.getfixturevalue("data")
    if kind == "DEEPSPEED":
        if importlib.util.find_spec("deepspeed") is None:
            from accelerate.commands.launch import deepspeed_launcher

            with pytest.raises(ImportError, match="DeepSpeed is not installed"):
                deepspeed_launcher(SimpleNamespace())
        elif not torch.cuda.is_available():
            res = _train(data, tmp_path / "run", procs=2, config=config, extra=SGD)
            assert res.returncode != 0 and "asks for DeepSpeed" in res.stderr, res.stderr[-3000:]
        else:  # a GPU machine with deepspeed: at least a real start
            _ok(_train(data, tmp_path / "run", procs=2, config=config, extra=SGD))
        return
    assert kind in ("MULTI_GPU", "FSDP"), f"{config}: no test for distributed_type {kind}; add one"
    if kind == "FSDP":
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    oracle, one_sgd = request.getfixturevalue("oracle"), request.getfixturevalue("one_sgd")
    out, grads = tmp_path / "run", tmp_path / "grads"
    _ok(_train(data, out, procs=2, config=config, grads=grads, extra=SGD))

    g0, g1 = _grads(grads, 0), _grads(grads, 1)
    for name in g0:
        assert torch.equal(g0[name], g1[name]), f"ranks disagree on {name}"
    g_one = _assert_grads_close(g0, one_sgd.grads, "2 processes vs 1")
    g_direct = _assert_grads_close(g0, oracle.grads, "2 processes vs direct")
    ref, got = _weights(one_sgd.out), _weights(out)
    for name in ref:
        # SGD is linear in the gradients: the weights differ only by lr x their round-off (measured:
        # ~1e-7); a micro-batch weighted wrongly moves them by > 1e-4.
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    w_worst = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    log, ref_log = _log(out), _log(one_sgd.out)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    for row, want in zip(log, ref_log, strict=True):
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-6)
        assert (row["lr"], row["tokens"]) == (want["lr"], want["tokens"])
    print(
        f"{os.path.basename(config)}: step-1 gradients max |diff| / max |g| = {g_one:.2e} vs 1 process, "
        f"{g_direct:.2e} vs direct; "
        f"weights after {STEPS} SGD steps max |diff| = {w_worst:.2e}"
    )


def test_adamw_two_processes_match_one(adamw_runs):
    """AdamW moves each weight by about lr * m / sqrt(v): the gradient's size cancels, so an element
    whose gradient sits at round-off level (|g| ~ 1e-8 where its tensor's gradients reach 1e-1, and the
    1- and 2-process sums of the same token losses differ in their last bits) can step either way, up to
    2 * lr apart. Such elements are rare, so: all but 1 in 10^4 weights within 1e-2 * lr. A real error
    moves far more: weighting the micro-batches by their mean instead of their tokens moves 45% of them
    by more than that (measured on this setup)."""
    ref, got = _weights(adamw_runs.one), _weights(adamw_runs.two)
    diff = torch.cat([(got[k] - ref[k]).abs().flatten() for k in ref])
    off = int((diff > 1e-2 * ADAMW_LR).sum())
    assert off <= 1e-4 * diff.numel(), f"{off} of {diff.numel()} weights differ by > 1e-2 * lr"
    for row, want in zip(_log(adamw_runs.two), _log(adamw_runs.one), strict=True):
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert (row["step"], row["lr"], row["tokens"]) == (want["step"], want["lr"], want["tokens"])
    print(
        f"AdamW {STEPS} steps, 2 vs 1 process: max |diff| = {float(diff.max()):.2e} = "
        f"{float(diff.max()) / ADAMW_LR:.2e} lr; {off} weights beyond 1e-2 lr"
    )


def test_resume_under_two_processes_equals_uninterrupted(adamw_runs, data, tmp_path):
    """A 2-process run stopped after its step-2 checkpoint (the checkpoint and log it left behind)
    and started again finishes with the uninterrupted run's weights and log."""
    out = tmp_path / "resumed"
    shutil.copytree(adamw_runs.two / "checkpoints" / "step-00000002", out / "checkpoints" / "step-00000002")
    shutil.copy(adamw_runs.two / "train_log.jsonl", out / "train_log.jsonl")
    res = _ok(_train(data, out, procs=2, config=os.path.join(CONFIG_DIR, "ddp.yaml"), extra=ADAMW))
    assert "resumed from" in res.stdout and "(step 2)" in res.stdout
    ref, got = _weights(adamw_runs.two), _weights(out)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-7, msg=name)
    full, resumed = _log(adamw_runs.two), _log(out)
    assert resumed[:2] == full[:2]  # kept from before the stop, not trained again
    assert [{k: r[k] for k in ("step", "loss", "lr", "tokens")} for r in resumed] == [
        {k: r[k] for k in ("step", "loss", "lr", "tokens")} for r in full
    ]


def test_train_refuses_an_engine_accelerate_did_not_set_up(monkeypatch):
    from accelerate.utils import DistributedType

    from lr_train.training import _check_launch

    acc = SimpleNamespace(
        num_processes=2, distributed_type=DistributedType.MULTI_CPU, device=torch.device("cpu")
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    _check_launch(acc)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="asks for FSDP but accelerate set up MULTI_CPU"):
        _check_launch(acc)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="asks for DeepSpeed"):
        _check_launch(acc)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="launched as 4 processes but accelerate joined 2"):
        _check_launch(acc)
