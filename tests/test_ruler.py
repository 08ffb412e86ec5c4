"""RULER-style tasks: prompt generation (determinism, exact lengths, needle depth), scoring, the suite on a
tiny model, the figures, and `python -m lr_train eval --suite ruler` (output and bad input)."""

import json
import os
import re

import pytest
import torch

from lr_train import ruler
from lr_train.cli import main
from lr_train.evaluation import retention, ruler_suite, wilson_interval
from lr_train.models import build_model
from lr_train.plots import accuracy_vs_length
from lr_train.toy import toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


class BosTokenizer:
    """The toy tokenizer (which has no BOS) with a BOS token: ``bos_token_id`` one past its vocab."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.bos_token_id = len(tok)

    def __call__(self, text, add_special_tokens=False):
        return self.tok(text, add_special_tokens=add_special_tokens)


@pytest.fixture(scope="module")
def tiny(tok):
    return build_model("tiny-llama", vocab_size=len(tok)).eval()


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _find(seq: list[int], sub: list[int]) -> int:
    hits = [i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub]
    assert len(hits) == 1, f"expected the needle once, found it {len(hits)} times"
    return hits[0]


# -- generation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ruler.TASKS)
def test_samples_are_deterministic_and_seeded(tok, task):
    n = ruler.min_length(tok, task) + 40
    a = ruler.task_samples(tok, task, n, 0.5, 3, seed=0)
    b = ruler.task_samples(tok, task, n, 0.5, 3, seed=0)
    assert [s.input_ids for s in a] == [s.input_ids for s in b]
    assert [s.answer for s in a] == [s.answer for s in b]
    c = ruler.task_samples(tok, task, n, 0.5, 3, seed=1)
    assert all(x.input_ids != y.input_ids for x, y in zip(a, c, strict=True))
    # Sample k of a cell does not depend on how many samples are drawn.
    assert ruler.task_samples(tok, task, n, 0.5, 1, seed=0)[0].input_ids == a[0].input_ids


@pytest.mark.parametrize("task", ruler.TASKS)
@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_prompts_have_exactly_the_requested_length(tok, task, bos):
    t = BosTokenizer(tok) if bos else tok
    need = ruler.min_length(t, task)
    lengths = [n for n in (97, 256, 333) if n >= need]
    assert lengths[-2:] == [256, 333]
    for length in lengths:
        for depth in (0.0, 0.3, 1.0):
            for s in ruler.task_samples(t, task, length, depth, 3, seed=5):
                assert len(s.input_ids) == length and s.length == length and s.task == task
                assert (s.input_ids[0] == len(tok)) == bos
                assert len(tok) not in s.input_ids[1:]
    with pytest.raises(ValueError, match=f"length {need // 2} is too short for task {task}"):
        ruler.task_samples(t, task, need // 2, 0.5, 1)


SENTENCE = 24  # more tokens than any haystack sentence has


def _single_needle(tok, s):
    text = tok.decode(s.input_ids[1:])
    key = re.search(r"What is the special magic number for (\w+)\?", text).group(1)
    return _ids(tok, ruler.NEEDLE.format(key=key, value=s.answer[0])), _ids(
        tok, ruler.QUESTION.format(key=key)
    )


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_single_needle_sits_at_the_requested_depth(tok, depth):
    t = BosTokenizer(tok)
    for s in ruler.task_samples(t, "niah_single", 333, depth, 4, seed=3):
        needle, question = _single_needle(tok, s)
        assert s.input_ids[-len(question) :] == question
        at = _find(s.input_ids, needle)
        budget = 333 - 1 - len(needle) - len(question)
        if depth == 0.0:
            assert at == 1  # right after BOS
        elif depth == 1.0:
            assert at + len(needle) == 333 - len(question)  # right before the question
        else:
            assert abs((at - 1) - depth * budget) <= SENTENCE  # needles go between sentences


def test_variable_chain_is_in_order_and_ends_before_the_question_at_depth_1(tok):
    for depth in (0.0, 1.0):
        for s in ruler.task_samples(tok, "vt", 256, depth, 3, seed=2):
            text = tok.decode(s.input_ids)
            value = re.search(r"assigned the value (\d+)\?", text).group(1)
            a, b, c = s.answer
            chain = [
                ruler.VT_FIRST.format(name=a, value=value),
                ruler.VT_LINK.format(name=b, prev=a),
                ruler.VT_LINK.format(name=c, prev=b),
            ]
            pieces = [_ids(tok, piece) for piece in chain]
            spots = [_find(s.input_ids, piece) for piece in pieces]
            assert spots == sorted(spots)
            if depth == 0.0:
                assert spots[0] == 0  # the toy tokenizer has no BOS
            else:  # the whole chain, in order, right before the question
                tail = [i for p in pieces for i in p] + _ids(tok, ruler.VT_QUESTION.format(value=value))
                assert s.input_ids[-len(tail) :] == tail


def test_multivalue_answer_is_in_text_order_and_multiquery_in_asked_order(tok):
    for s in ruler.task_samples(tok, "niah_multivalue", 300, 0.5, 4, seed=9):
        text = tok.decode(s.input_ids)
        key = re.search(r"What are all the special magic numbers for (\w+)\?", text).group(1)
        stated = re.findall(rf"The special magic number for {key} is (\d+)\.", text)
        assert stated == s.answer and len(stated) == ruler.NEEDLES
    for s in ruler.task_samples(tok, "niah_multiquery", 300, 0.5, 4, seed=9):
        text = tok.decode(s.input_ids)
        k1, k2 = re.search(r"numbers for (\w+) and (\w+)\? The", text).groups()
        values = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", text))
        assert s.answer == [values[k1], values[k2]]
    for s in ruler.task_samples(tok, "niah_multikey", 300, 0.0, 4, seed=9):
        text = tok.decode(s.input_ids)
        assert text.startswith(" The special magic number for ")
        key = re.search(r"What is the special magic number for (\w+)\?", text).group(1)
        values = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", text))
        assert len(values) == ruler.NEEDLES and s.answer == [values[key]]


def test_parse_tasks(tok):
    assert ruler.parse_tasks(["all"]) == list(ruler.TASKS)
    assert ruler.parse_tasks(["vt", "niah_single", "vt"]) == ["vt", "niah_single"]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        ruler.parse_tasks(["nope"])


# -- scoring ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, answer, generated, ok",
    [
        ("niah_single", ["12345"], " 12345.", True),
        ("niah_single", ["12345"], " 12345 and then 99999", True),
        ("niah_single", ["12345"], " 1234.", False),
        ("niah_single", ["12345"], " 123456.", False),
        ("niah_single", ["12345"], " 54321, 12345", False),
        ("niah_single", ["12345"], " the river", False),
        ("niah_multikey", ["70001"], " 70001.", True),
        ("niah_multivalue", ["1", "2", "3", "4"], " 1, 2, 3 and 4.", True),
        ("niah_multivalue", ["1", "2", "3", "4"], " 1, 2, 3.", False),
        ("niah_multivalue", ["1", "2", "3", "4"], " 2, 1, 3 and 4.", False),
        ("niah_multiquery", ["11111", "22222"], " 11111 and 22222.", True),
        ("niah_multiquery", ["11111", "22222"], " 22222 and 11111.", False),
        ("niah_multiquery", ["11111", "22222"], " 11111.", False),
        ("vt", ["Kari", "Velmo", "Dor"], " Kari, Velmo and Dor.", True),
        ("vt", ["Kari", "Velmo", "Dor"], " Dor, Kari and Velmo.", True),
        ("vt", ["Kari", "Velmo", "Dor"], " VAR Kari, VAR Velmo and VAR Dor.", True),
        ("vt", ["Kari", "Velmo", "Dor"], " Kari and Velmo.", False),
        ("vt", ["Kari", "Velmo", "Dor"], " Kari, Velmo and Zeno.", False),
    ],
)
def test_score(task, answer, generated, ok):
    assert ruler.score(task, answer, generated) is ok


@pytest.mark.parametrize("task", ruler.TASKS)
def test_correct_answers_fit_in_max_new_tokens(tok, task):
    limit = ruler.max_new_tokens(tok, task)
    for s in ruler.task_samples(tok, task, 320, 0.5, 8, seed=4):
        text = ruler.answer_text(task, s.answer)
        assert ruler.score(task, s.answer, text)
        # What greedy generation would keep of it: the first max_new_tokens tokens.
        assert ruler.score(task, s.answer, tok.decode(_ids(tok, text)[:limit]))


# -- the suite -------------------------------------------------------------------------------------------

TASKS2 = ["niah_single", "vt"]


def _check_structure(r, tasks, lengths, depths, samples, seed):
    assert set(r) == {"tasks", "lengths", "depths", "by_length", "mean", "samples", "seed", "examples"}
    assert list(r["tasks"]) == tasks and r["lengths"] == lengths and r["depths"] == depths
    assert r["samples"] == samples and r["seed"] == seed
    for t in tasks:
        cell = r["tasks"][t]
        assert set(cell) == {"lengths", "depths", "accuracy", "by_length", "mean"}
        assert len(cell["accuracy"]) == len(depths) and all(
            len(row) == len(lengths) for row in cell["accuracy"]
        )
        assert all(v * samples == round(v * samples) and 0 <= v <= 1 for row in cell["accuracy"] for v in row)
        for j in range(len(lengths)):
            assert cell["by_length"][j] == pytest.approx(
                sum(row[j] for row in cell["accuracy"]) / len(depths)
            )
        assert cell["mean"] == pytest.approx(sum(cell["by_length"]) / len(lengths))
    for j in range(len(lengths)):
        assert r["by_length"][j] == pytest.approx(
            sum(r["tasks"][t]["by_length"][j] for t in tasks) / len(tasks)
        )
    assert r["mean"] == pytest.approx(sum(r["tasks"][t]["mean"] for t in tasks) / len(tasks))
    assert all(1 <= sum(e["task"] == t for e in r["examples"]) <= 2 for t in tasks)
    for e in r["examples"]:
        assert set(e) == {"task", "length", "depth", "answer", "generated"} and isinstance(
            e["generated"], str
        )
    json.dumps(r)


def test_ruler_suite_on_a_tiny_model_returns_the_documented_structure(tok, tiny):
    r = ruler_suite(tiny, tok, tasks=TASKS2, lengths=[128, 160], depths=[0.0, 1.0], samples=2, progress=False)
    _check_structure(r, TASKS2, [128, 160], [0.0, 1.0], 2, 0)
    assert len(r["examples"]) == 4
    again = ruler_suite(
        tiny,
        tok,
        tasks=TASKS2,
        lengths=[128, 160],
        depths=[0.0, 1.0],
        samples=2,
        batch_size=1,
        progress=False,
    )
    assert again["tasks"] == r["tasks"]
    with pytest.raises(ValueError, match="unknown task"):
        ruler_suite(tiny, tok, tasks=["nope"], lengths=[128], progress=False)
    with pytest.raises(ValueError, match="too short"):
        ruler_suite(tiny, tok, tasks=["vt"], lengths=[40], depths=[0.0], samples=1, progress=False)


def _oracle_generate(tok, answers):
    """A stand-in for ``model.generate`` that answers every known prompt with ``answers[prompt]``."""

    def generate(ids, *, attention_mask, max_new_tokens, do_sample, pad_token_id):
        assert do_sample is False and attention_mask.shape == ids.shape and bool(attention_mask.all())
        rows = []
        for row in ids.tolist():
            new = _ids(tok, answers(tuple(row)))[:max_new_tokens]
            rows.append(row + new + [pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)

    return generate


def test_a_model_that_answers_correctly_scores_1_and_a_wrong_one_0(tok, tiny, monkeypatch):
    lengths, depths, tasks = [150, 211], [0.0, 0.5, 1.0], list(ruler.TASKS)
    truth = {}
    for task in tasks:
        for d in depths:
            for n in lengths:
                for s in ruler.task_samples(tok, task, n, d, 2, seed=7):
                    truth[tuple(s.input_ids)] = ruler.answer_text(task, s.answer)
    monkeypatch.setattr(tiny, "generate", _oracle_generate(tok, truth.__getitem__))
    r = ruler_suite(
        tiny, tok, tasks=["all"], lengths=lengths, depths=depths, samples=2, seed=7, progress=False
    )
    _check_structure(r, tasks, lengths, depths, 2, 7)
    assert r["mean"] == 1.0
    assert all(ruler.score(e["task"], e["answer"], e["generated"]) for e in r["examples"])
    monkeypatch.setattr(tiny, "generate", _oracle_generate(tok, lambda _: " 10000, 10001 and Zeno."))
    r = ruler_suite(
        tiny, tok, tasks=["all"], lengths=lengths, depths=depths, samples=2, seed=7, progress=False
    )
    assert r["mean"] == 0.0


def test_retention_reuses_the_suite_at_the_native_length(tok, tiny, monkeypatch):
    from lr_train.recipe import default_eval_texts, token_stream

    tokens = token_stream(tok, default_eval_texts(4))
    common = dict(tasks=["niah_single"], depths=[0.0, 1.0], samples=1, seed=0)
    suite = ruler_suite(tiny, tok, lengths=[128, 160], progress=False, **common)
    monkeypatch.setattr(tiny, "generate", lambda *a, **k: pytest.fail("retention re-ran a cell"))
    ret = retention(
        tiny, tok, tokens, native_length=128, ppl_windows=2, ruler_result=suite, progress=False, **common
    )
    assert set(ret) == {"length", "perplexity", "nll", "windows", "ruler_mean", "ruler_by_task"}
    assert ret["length"] == 128 and ret["windows"] == 2 and ret["perplexity"] > 1
    assert ret["ruler_mean"] == suite["tasks"]["niah_single"]["by_length"][0]


def test_wilson_interval():
    lo, hi = wilson_interval(10, 20)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)
    assert wilson_interval(0, 8)[0] == 0.0 and wilson_interval(8, 8)[1] == 1.0


def test_accuracy_vs_length_png(tmp_path):
    from PIL import Image

    path = str(tmp_path / "by-length.png")
    series = {
        "base": ([1.0, 0.5, 0.0], [0.8, 0.3, 0.0], [1.0, 0.7, 0.2]),
        "longrecipe": ([1.0, 0.9, 0.6],) * 3,
    }
    accuracy_vs_length(path, [4096, 16384, 65536], series, title="RULER", native_length=8192)
    img = Image.open(path)
    assert img.format == "PNG" and img.width > 300
    accuracy_vs_length(path, [333], {"one": ([0.5], [0.2], [0.8])}, title="one length")
    assert os.listdir(tmp_path) == ["by-length.png"]
    with pytest.raises(ValueError, match="'base'"):
        accuracy_vs_length(path, [1, 2], {"base": ([1.0], [1.0], [1.0])}, title="")


# -- the eval command ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_model("tiny-llama", vocab_size=len(tok)).save_pretrained(folder)
    return str(folder)


RULER_ARGS = ["--suite", "ruler", "--tasks", *TASKS2, "--lengths", "160", "192", "--depths", "0", "1"]
RULER_ARGS += ["--samples", "2", "--ppl-windows", "2", "--backend", "torch", "--quiet"]


def test_eval_ruler_writes_results_and_figures(tmp_path, saved_model, capsys):
    from PIL import Image

    out = tmp_path / "ev"
    assert (
        main(["eval", "--model", saved_model, "--tokenizer", "toy", "--output", str(out), *RULER_ARGS]) == 0
    )
    printed = capsys.readouterr().out
    assert "RULER accuracy by length" in printed and "retention at 160 tokens" in printed
    names = sorted(os.listdir(out))
    assert names == ["results.json", "ruler-by-length.png", "ruler-niah_single.png", "ruler-vt.png"]
    for name in names[1:]:
        assert Image.open(out / name).format == "PNG"
    res = json.load(open(out / "results.json"))
    assert set(res) == {"model", "settings", "ruler", "retention"} and res["model"] == saved_model
    _check_structure(res["ruler"], TASKS2, [160, 192], [0.0, 1.0], 2, 0)
    s = res["settings"]
    assert (
        s["suites"] == ["ruler"] and s["tasks"] == TASKS2 and s["samples"] == 2 and s["native_length"] == 160
    )
    assert s["depths"] == [0.0, 1.0] and s["ppl_windows"] == 2 and s["seed"] == 0 and s["tokenizer"] == "toy"
    assert s["patched"] is True and s["backend"] == "torch" and s["input"] is None and s["dtype"] == "float32"
    assert "trials" not in s and "ppl_length" not in s
    assert res["retention"]["length"] == 160 and res["retention"]["windows"] == 2
    # A second run of the same settings gives the same numbers: two runs can be compared.
    out2 = tmp_path / "ev2"
    main(["eval", "--model", saved_model, "--tokenizer", "toy", "--output", str(out2), *RULER_ARGS])
    res2 = json.load(open(out2 / "results.json"))
    assert res2["ruler"] == res["ruler"] and res2["retention"] == res["retention"]


def test_default_suites_keep_what_the_demo_uses(tmp_path, tok, tiny):
    from lr_train.commands.eval import evaluate, write_results
    from lr_train.recipe import default_eval_texts

    results = evaluate(
        tiny,
        tok,
        default_eval_texts(4),
        lengths=[64],
        depths=[0.0, 1.0],
        trials=1,
        ppl_length=64,
        ppl_windows=1,
        seed=0,
        progress=False,
    )
    assert set(results) == {"settings", "perplexity", "passkey"}
    results["model"] = "tiny"
    write_results(results, str(tmp_path / "out"), overwrite=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["passkey.png", "results.json"]


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text("A few words of text, far fewer than one window.")
    return str(path)


@pytest.mark.parametrize(
    "extra, flag",
    [
        pytest.param(["--suite", "ruler", "--tasks", "niah_single", "needle"], "--tasks", id="unknown-task"),
        pytest.param(["--suite", "ruler", "rulers"], "--suite", id="unknown-suite"),
        pytest.param(["--suite", "ruler", "--lengths", "60"], "--lengths 60", id="too-short"),
        pytest.param(
            ["--suite", "ruler", "--tasks", "vt", "--lengths", "100"], "--lengths 100", id="too-short-vt"
        ),
        pytest.param(["--suite", "ruler", "--native-length", "50"], "--native-length 50", id="short-native"),
        pytest.param(["--suite", "passkey", "--tasks", "vt"], "--tasks", id="tasks-without-ruler"),
        pytest.param(["--suite", "perplexity", "--samples", "2"], "--samples", id="samples-without-ruler"),
        pytest.param(["--suite", "ruler", "--input", "SHORT"], "--native-length 256", id="native-past-text"),
        pytest.param(["--suite", "ruler", "--no-tok"], "--model", id="model-without-tokenizer"),
    ],
)
def test_eval_bad_input_is_one_line_naming_the_flag_before_loading(
    tmp_path, saved_model, short_text, capsys, monkeypatch, extra, flag
):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    tokenizer = [] if "--no-tok" in extra else ["--tokenizer", "toy"]
    extra = [short_text if a == "SHORT" else a for a in extra if a != "--no-tok"]
    lengths = [] if "--lengths" in extra else ["--lengths", "256"]
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", saved_model, *tokenizer, "--output", str(out), *lengths, *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("eval: error:") and flag in err, err
    assert os.listdir(tmp_path) == []
