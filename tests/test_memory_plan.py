"""The memory estimator against measured CPU peaks, the plan command, and activation offload."""

import json

import pytest
import torch

from lr_train import memory, patch
from lr_train.offload import enable_checkpointing
from lr_train.optim import build_optimizer

CONFIG = dict(
    model_type="llama",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=8192,
    tie_word_embeddings=False,
)


@pytest.fixture(autouse=True)
def nan_filled_empty():
    """No NaN-filling torch.empty here: these tests build models on the meta device and count bytes; the
    conftest's wrapper of torch.empty would hide it from the meta device context."""
    yield


def _config():
    from transformers import AutoConfig

    cfg = dict(CONFIG)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _measure(strategy: str, T: int, dtype: str) -> int:
    """Peak bytes of live CPU tensors during one steady-state training step (two micro-batches)."""
    from transformers import AutoModelForCausalLM

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 1, T), generator=torch.Generator().manual_seed(T))
    state = {}
    k = memory.STRATEGIES.index(strategy)

    def step():
        model, opt = state["model"], state["opt"]
        for i in range(2):
            (model(input_ids=ids[i], labels=ids[i]).loss / 2).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def setup():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(), dtype=torch_dtype)
        patch(model, backend="torch")
        if k >= 1:
            enable_checkpointing(model, offload=k >= 2)
        model.train()
        opt, _, _ = build_optimizer(model, lr=1e-4, master_device="cpu")
        state.update(model=model, opt=opt)
        step()  # the optimizer state exists from here on: the plan's steady state

    peak, _ = memory.cpu_peak_bytes(step, setup=setup)
    return peak


@pytest.mark.parametrize(
    "strategy, T, dtype",
    [
        pytest.param("plain", 512, "fp32", id="plain-512-fp32"),
        pytest.param("plain", 2048, "bf16", id="plain-2048-bf16"),
        pytest.param("checkpoint", 1024, "fp32", id="checkpoint-1024-fp32"),
        pytest.param("checkpoint", 4096, "bf16", id="checkpoint-4096-bf16"),
        pytest.param("offload-activations", 2048, "fp32", id="offload-activations-2048-fp32"),
        pytest.param("offload-optimizer", 2048, "bf16", id="offload-optimizer-2048-bf16"),
    ],
)
def test_estimate_matches_measured_cpu_peak(strategy, T, dtype):
    measured = _measure(strategy, T, dtype)
    shape = memory.model_shape(_config(), "tiny")
    est = memory.estimate(shape, memory.Settings(T, dtype=dtype, device="cpu", grad_accum=2), strategy)
    ratio = est.total_peak / measured
    print(f"{strategy} T={T} {dtype}: plan {est.total_peak} B, measured {measured} B, ratio {ratio:.3f}")
    assert 0.85 <= ratio <= 1.15, (est.total_peak, measured, ratio)


def _grads(offload: bool) -> tuple[dict[str, torch.Tensor], int]:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config())
    patch(model, backend="torch")
    stats = enable_checkpointing(model, offload=offload)
    model.train()
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 300), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, stats.bytes if stats else 0


def test_activation_offload_gives_identical_gradients():
    plain, _ = _grads(offload=False)
    offloaded, moved = _grads(offload=True)
    for name, g in plain.items():
        assert torch.equal(offloaded[name], g), name
    # exactly the checkpointed layer inputs went to the CPU: layers x T x d fp32, what the plan counts
    assert moved == CONFIG["num_hidden_layers"] * 300 * CONFIG["hidden_size"] * 4


def _plan(capsys, *argv):
    from lr_train.cli import main

    try:
        rc = main(["plan", *argv])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_plan_llama3_8b_at_38400_fits_80gib(capsys):
    rc, out, _ = _plan(capsys, "--model", "llama-3-8b", "--train-length", "38400", "--gpu-memory", "80GiB")
    assert rc == 0
    assert "choice: offload-optimizer" in out
    assert "8.03B parameters" in out


def test_plan_json_and_nothing_fits(capsys):
    rc, out, _ = _plan(
        capsys, "--model", "qwen2-7b", "--train-length", "131072", "--gpu-memory", "24GiB", "--json"
    )
    data = json.loads(out)
    assert rc == 1 and data["chosen"] is None
    assert [s["strategy"] for s in data["strategies"]] == list(memory.STRATEGIES)
    text = " ".join(data["suggestions"])
    assert "GPU" in text and "--train-length" in text and "sequence parallelism on" in text
    # the suggested length really fits
    length = int(text.split("--train-length ")[1].split()[0])
    shape = memory.load_model_shape("qwen2-7b")
    assert memory.plan(shape, memory.Settings(length), 24 * 2**30).chosen is not None
    assert memory.plan(shape, memory.Settings(length + 1), 24 * 2**30).chosen is None


def test_plan_reads_a_config_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    rc, out, _ = _plan(capsys, "--model", str(path), "--train-length", "4096", "--gpu-memory", "8GiB")
    assert rc == 0 and "choice: plain" in out


@pytest.mark.parametrize(
    "argv, flag",
    [
        pytest.param(["--model", "llama-9b", "--train-length", "10"], "--model", id="unknown-model"),
        pytest.param(["--model", "{cfg}", "--train-length", "10"], "--model", id="unreadable-config"),
        pytest.param(["--model", "llama-3-8b", "--train-length", "0"], "--train-length", id="length-0"),
        pytest.param(["--model", "llama-3-8b", "--train-length", "-5"], "--train-length", id="length-neg"),
        pytest.param(
            ["--model", "llama-3-8b", "--train-length", "8", "--gpu-memory", "80 parsecs"],
            "--gpu-memory",
            id="bad-gpu-memory",
        ),
        pytest.param(
            ["--model", "llama-3-8b", "--train-length", "8", "--cpu-memory", "0GiB"],
            "--cpu-memory",
            id="zero-cpu-memory",
        ),
        pytest.param(
            ["--model", "llama-3-8b", "--train-length", "8", "--precision", "pure-bf16", "--dtype", "fp32"],
            "--precision",
            id="pure-bf16-fp32",
        ),
    ],
)
def test_plan_bad_input_is_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, out, err = _plan(capsys, *[a.replace("{cfg}", str(bad)) for a in argv])
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80GiB", 80 * 2**30),
        ("80GB", 80 * 10**9),
        ("80g", 80 * 2**30),
        ("1.5TiB", int(1.5 * 2**40)),
        ("512", 512),
    ],
)
def test_parse_size(text, expected):
    assert memory.parse_size(text) == expected


def test_more_offload_never_needs_more_gpu_memory():
    shape = memory.load_model_shape("llama-3-8b")
    for length in (1024, 24576, 38400):
        peaks = [memory.estimate(shape, memory.Settings(length), s).gpu_peak for s in memory.STRATEGIES]
        assert peaks == sorted(peaks, reverse=True), (length, peaks)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from lr_train.data import PreparedDatasetWriter
    from lr_train.toy import toy_corpus, toy_tokenizer

    folder = tmp_path_factory.mktemp("data")
    tok = toy_tokenizer()
    writer = PreparedDatasetWriter(str(folder))
    for text in toy_corpus(6, seed=5):
        ids = tok(text)["input_ids"][:96]
        writer.write(ids, list(range(len(ids))))
    writer.close({"settings": {"method": "full", "train_length": 96, "target_length": 96}})
    return folder


def _train_cmd(capsys, prepared, output, *extra):
    from lr_train.cli import main

    argv = [
        "train",
        "--stage",
        "anneal",
        "--model",
        "tiny-llama",
        "--tokenizer",
        "toy",
        "--data",
        str(prepared),
    ]
    argv += [
        "--output",
        str(output),
        "--max-steps",
        "2",
        "--tokens-per-batch",
        "192",
        "--quiet",
        "--backend",
        "torch",
    ]
    try:
        rc = main([*argv, *extra])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_memory_plan_auto_trains_with_fp32_masters(tmp_path, capsys, prepared):
    from safetensors.torch import load_file

    rc, _, err = _train_cmd(capsys, prepared, tmp_path / "run", "--memory-plan", "auto", "--dtype", "bf16")
    assert rc in (0, None), err
    assert "memory plan: plain" in err  # a tiny model fits this machine's RAM as is
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


@pytest.mark.parametrize(
    "extra, flag",
    [
        pytest.param(
            ["--memory-plan", "offload-params"], "--memory-plan", id="offload-params-without-deepspeed"
        ),
        pytest.param(["--memory-plan", "offload-everything"], "--memory-plan", id="unknown-strategy"),
        pytest.param(
            ["--memory-plan", "offload-optimizer", "--precision", "pure-bf16", "--dtype", "bf16"],
            "--memory-plan",
            id="pure-bf16-with-optimizer-offload",
        ),
        pytest.param(["--precision", "pure-bf16"], "--precision", id="pure-bf16-fp32-weights"),
    ],
)
def test_train_memory_plan_bad_input(tmp_path, capsys, prepared, extra, flag):
    rc, _, err = _train_cmd(capsys, prepared, tmp_path / "run", *extra)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and flag in lines[0], err
    assert not (tmp_path / "run").exists()
