"""The CLI's argument handling: mistyped paths, flag names in errors, output folders, threads, warnings.

Every error case here fails before a model or tokenizer is loaded (the loaders are made to raise), so
these tests stay fast and prove that no hub call is made."""

import logging
import os
import stat
import subprocess
import sys

import pytest
import torch

from lr_train.checkpoint import atomic_dir, atomic_write_text
from lr_train.cli import check_model_arg, limit_threads, looks_local, main, quiet_known_warnings


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model or tokenizer (local or hub) fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"a model or tokenizer was loaded: {args}")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "afile.txt"
    path.write_text("On May 3, 1999, Ada counted 42 boxes. Why?\n")
    return path


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("./runs/merged", True),
        ("../model", True),
        ("/abs/model", True),
        ("~/model", True),
        ("a/b/c", True),
        ("model.safetensors", True),
        ("org/weights.json", True),
        ("bad name", True),
        ("meta-llama/Meta-Llama-3-8B", False),
        ("Qwen/Qwen2.5-7B", False),
        ("gpt2", False),
    ],
)
def test_local_looking_rule(value, local):
    assert looks_local(value) is local


def test_first_component_existing_means_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("runs/merged")
    (tmp_path / "runs").mkdir()
    assert looks_local("runs/merged")
    with pytest.raises(ValueError, match=r"^--trained runs/merged: no such folder"):
        check_model_arg("runs/merged", "--trained")
    check_model_arg("toy", "--tokenizer")  # presets never touch the disk
    check_model_arg("meta-llama/Meta-Llama-3-8B", "--model")  # a hub name passes through


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["eval", "--model", "./runs/mergd", "--lengths", "64", "--output", "{out}"], "--model"),
        (["eval", "--model", "{text}", "--lengths", "64", "--output", "{out}"], "--model"),
        (["merge", "--original", "a/b", "--trained", "/nowhere/model", "--output", "{out}"], "--trained"),
        (["analyze", "--base", "./b", "--long", "c/d", "--input", "{text}", "--output", "{out}.json"],
         "--base"),
        (["train", "--stage", "extend", "--model", "./no-model", "--data", "{out}", "--output", "{out}",
          "--max-steps", "1", "--tokens-per-batch", "8"], "--model"),
        (["prepare", "--tokenizer", "tok.json", "--input", "{text}", "--output", "{out}",
          "--train-length", "8", "--target-length", "16"], "--tokenizer"),
    ],
    ids=["eval-missing", "eval-file", "merge", "analyze", "train", "prepare"],
)  # fmt: skip
def test_mistyped_local_path_fails_at_once_naming_the_flag(
    argv, flag, tmp_path, text_file, capsys, no_loading
):
    argv = [a.format(out=tmp_path / "out", text=text_file) for a in argv]
    assert run(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    value = argv[argv.index(flag) + 1]
    assert line.startswith(f"{argv[0]}: error: {flag} {value}")
    assert "no such folder" in line or "is a file" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["prepare", "--tokenizer", "toy", "--input", "{text}", "--output", "{out}", "--train-length", "-5",
          "--target-length", "10"], "--train-length"),
        (["prepare", "--tokenizer", "toy", "--input", "{text}", "--output", "{out}", "--train-length", "8",
          "--target-length", "10", "--drop-ratio", "1.5"], "--drop-ratio"),
        (["merge", "--original", "a/b", "--trained", "c/d", "--output", "{out}", "--weight", "7"],
         "--weight"),
        (["eval", "--model", "a/b", "--lengths", "1", "--output", "{out}"], "--lengths"),
        (["eval", "--model", "a/b", "--lengths", "64", "--ppl-length", "1", "--output", "{out}"],
         "--ppl-length"),
        (["eval", "--model", "a/b", "--lengths", "64", "--depths", "2", "--output", "{out}"], "--depths"),
        (["train", "--stage", "anneal", "--model", "a/b", "--data", "{out}", "--output", "{out}",
          "--max-steps", "0", "--tokens-per-batch", "8"], "--max-steps"),
        (["train", "--stage", "anneal", "--model", "a/b", "--data", "{out}", "--output", "{out}",
          "--max-steps", "2", "--tokens-per-batch", "8", "--lr", "-1"], "--lr"),
        (["analyze", "--base", "a/b", "--long", "c/d", "--input", "{text}", "--output", "{out}",
          "--max-length", "1"], "--max-length"),
    ],
)  # fmt: skip
def test_argument_errors_name_the_flag_in_one_line(argv, flag, tmp_path, text_file, capsys, no_loading):
    argv = [a.format(out=tmp_path / "out", text=text_file) for a in argv]
    assert run(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"argument {flag}:" in line and line.startswith(f"{argv[0]}: error:"), line


def test_cross_flag_errors_name_both_flags(tmp_path, text_file, capsys, no_loading):
    common = ["prepare", "--tokenizer", "toy", "--input", str(text_file), "--output", str(tmp_path / "o")]
    assert run([*common, "--train-length", "64", "--target-length", "32"]) == 2
    assert "--target-length 32 must be >= --train-length 64" in one_error_line(capsys.readouterr().err)
    assert run([*common, "--train-length", "64", "--target-length", "128", "--min-length", "65"]) == 2
    assert "--min-length 65 must be <= --train-length 64" in one_error_line(capsys.readouterr().err)


def test_train_target_length_below_the_data_is_named(tmp_path, capsys, no_loading):
    from lr_train.data import PreparedDatasetWriter

    data = tmp_path / "data"
    data.mkdir()
    w = PreparedDatasetWriter(data)
    w.write([1, 2, 3], [0, 5, 900])
    w.close({"settings": {"target_length": 1024}})
    argv = ["train", "--stage", "extend", "--model", "tiny-llama", "--tokenizer", "toy", "--data", str(data)]
    argv += ["--output", str(tmp_path / "o"), "--max-steps", "1", "--tokens-per-batch", "8"]
    assert run([*argv, "--target-length", "512"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--target-length 512 is below the 1024 positions" in line and "at least 1024" in line


@pytest.mark.parametrize("command", ["eval", "merge", "prepare"])
def test_overwrite_never_turns_a_file_into_a_folder(command, tmp_path, text_file, capsys, no_loading):
    target = tmp_path / "result.txt"
    target.write_text("keep me")
    argv = {
        "eval": ["eval", "--model", "a/b", "--lengths", "64"],
        "merge": ["merge", "--original", "a/b", "--trained", "c/d"],
        "prepare": ["prepare", "--tokenizer", "toy", "--input", str(text_file)],
    }[command]
    if command == "prepare":
        argv += ["--train-length", "8", "--target-length", "16"]
    assert run([*argv, "--output", str(target), "--overwrite"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--output" in line and "is a file" in line
    assert target.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["afile.txt", "result.txt"], "leftovers"


def test_atomic_dir_replaces_folders_only_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(str(target)) as tmp:
        open(os.path.join(tmp, "x"), "w").close()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    with (
        pytest.raises(ValueError, match="exists; pass --overwrite"),
        atomic_dir(str(target), flag="--output"),
    ):
        pass
    with atomic_dir(str(target), overwrite=True) as tmp:
        open(os.path.join(tmp, "y"), "w").close()
    assert os.listdir(target) == ["y"]
    with pytest.raises(RuntimeError), atomic_dir(str(target), overwrite=True) as tmp:
        open(os.path.join(tmp, "z"), "w").close()
        raise RuntimeError("failed half way")
    assert os.listdir(target) == ["y"]
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"), atomic_dir(str(afile), overwrite=True):
        pass
    atomic_write_text(str(tmp_path / "note.md"), "hello")
    with pytest.raises(ValueError, match="is a folder"):
        atomic_write_text(str(target), "x", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["afile.txt", "note.md", "out"]
    assert stat.S_IMODE(os.stat(tmp_path / "note.md").st_mode) == 0o666 & ~umask


def test_error_lands_on_its_own_line_after_a_progress_bar(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "One line. Two lines."}\n' * 70 + '{"text": "unterminated\n')
    argv = ["prepare", "--tokenizer", "toy", "--input", str(bad), "--output", str(tmp_path / "o")]
    assert run([*argv, "--train-length", "8", "--target-length", "16"]) == 2
    err = capsys.readouterr().err
    assert "prepare:" in err.split("prepare: error:")[0], "no progress bar was drawn"
    assert f"\nprepare: error: {bad}:71: not valid JSON" in err
    assert err.endswith("\n") and err.count("error:") == 1


def test_threads_follow_the_affinity_mask(monkeypatch):
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    mask, before = os.sched_getaffinity(0), torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert limit_threads() == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        os.sched_setaffinity(0, mask)
        torch.set_num_threads(before)


def test_threads_never_exceed_what_omp_num_threads_asks(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert limit_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
        n = limit_threads()
        assert 1 <= n <= 64 and os.environ["OMP_NUM_THREADS"] == str(n)
    finally:
        torch.set_num_threads(before)


def test_misleading_transformers_messages_are_dropped():
    from transformers import PreTrainedTokenizerFast
    from transformers.generation.stopping_criteria import MaxLengthCriteria

    from lr_train.toy import toy_tokenizer

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        quiet_known_warnings()
        # An unusual limit so transformers' warning_once cache cannot have seen this message before.
        MaxLengthCriteria(max_length=50, max_position_embeddings=7)(torch.zeros(1, 9), None)
        tok = toy_tokenizer()
        short = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, model_max_length=3)
        short("one two three four five six seven")
        logging.getLogger("transformers.generation.stopping_criteria").warning("another message")
    finally:
        root.removeHandler(handler)
    assert records == ["another message"]


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_a_model_folder_without_a_tokenizer_is_named(command, tmp_path, text_file, capsys, no_loading):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    argv = {
        "eval": ["eval", "--model", str(model), "--lengths", "64"],
        "analyze": ["analyze", "--base", str(model), "--long", str(model), "--input", str(text_file)],
    }[command]
    assert run([*argv, "--output", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    flag = argv[1]
    assert f"{flag} {model} holds no tokenizer files" in line and line.endswith("pass --tokenizer"), line


def test_argument_errors_do_not_import_torch():
    """A mistyped flag or path is answered before torch, transformers or the other commands load."""
    code = (
        "import sys\n"
        "from lr_train.cli import main\n"
        "try:\n"
        "    main(['eval', '--model', './no-such-model', '--output', 'out', '--lengths', '64'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 2, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'lr_train.commands.train') if m in sys.modules]\n"
        "assert heavy == [], heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--model ./no-such-model" in proc.stderr
