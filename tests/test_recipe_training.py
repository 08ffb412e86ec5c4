"""Training stages, resume, merge and evaluation on a tiny model (CPU, torch backend)."""

import json
import os
import re
from itertools import islice

import pytest
import torch

from lr_train.data import PreparedDataset, PreparedDatasetWriter
from lr_train.evaluation import passkey_grid, perplexity_by_position
from lr_train.models import build_model
from lr_train.training import StageConfig, packed_batches, train_stage


@pytest.fixture(scope="module")
def tokenizer():
    from lr_train.toy import toy_tokenizer

    return toy_tokenizer()


def _tiny(tokenizer, seed=0):
    return build_model("tiny-llama", vocab_size=len(tokenizer), seed=seed)


@pytest.fixture
def dataset(tmp_path, tokenizer):
    from lr_train.toy import toy_corpus

    (tmp_path / "data").mkdir()
    writer = PreparedDatasetWriter(str(tmp_path / "data"))
    for text in toy_corpus(12, seed=3):
        ids = tokenizer(text)["input_ids"][:96]
        writer.write(ids, list(range(len(ids))))
    writer.close({"settings": {"method": "full", "train_length": 96, "target_length": 96}})
    return PreparedDataset(str(tmp_path / "data"))


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_packed_batches_split_by_rank_and_resume(dataset):
    gen = packed_batches(dataset, 200, seed=1)
    single = [b["input_ids"] for b in islice(gen(0), 6)]
    r0 = [b["input_ids"] for b in islice(gen(0, 0, 2), 3)]
    r1 = [b["input_ids"] for b in islice(gen(0, 1, 2), 3)]
    assert all(torch.equal(a, b) for a, b in zip(single[0::2], r0, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(single[1::2], r1, strict=True))
    resumed = [b["input_ids"] for b in islice(gen(4), 2)]
    assert all(torch.equal(a, b) for a, b in zip(single[4:], resumed, strict=True))


def test_resumed_training_equals_uninterrupted(tmp_path, tokenizer, dataset):
    from lr_train import patch

    def run(output, steps, model=None):
        model = model or _tiny(tokenizer)
        patch(model, backend="torch")
        cfg = StageConfig(output=str(output), max_steps=steps, lr=1e-3, save_every=2, schedule="constant")
        train_stage(model, packed_batches(dataset, 256, seed=0), cfg, progress=False)
        return model

    full = _params(run(tmp_path / "a", 4))
    run(tmp_path / "b", 2)
    assert [d for d in os.listdir(tmp_path / "b" / "checkpoints")] == ["step-00000002"]
    resumed = _params(run(tmp_path / "b", 4))
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=1e-6, msg=name)
    log = [json.loads(x) for x in open(tmp_path / "b" / "train_log.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert os.path.isfile(tmp_path / "b" / "model" / "config.json")


def test_training_reduces_loss(tmp_path, tokenizer, dataset):
    from lr_train import patch

    model = _tiny(tokenizer)
    patch(model, backend="torch")
    cfg = StageConfig(output=str(tmp_path / "o"), max_steps=12, lr=3e-3, save_every=100)
    train_stage(model, packed_batches(dataset, 512, seed=0), cfg, progress=False)
    losses = [json.loads(x)["loss"] for x in open(tmp_path / "o" / "train_log.jsonl")]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5


def test_perplexity_by_position_matches_logits(tokenizer):
    model = _tiny(tokenizer).eval()
    stream = torch.randint(0, len(tokenizer), (2 * 40 + 5,))
    res = perplexity_by_position(model, stream, length=40, buckets=3, max_windows=5, progress=False)
    assert res.windows == 2 and res.bucket_edges[0] == 1 and res.bucket_edges[-1] == 40
    nll = torch.zeros(39, dtype=torch.float64)
    with torch.no_grad():
        for w in range(2):
            ids = stream[w * 40 : (w + 1) * 40]
            logp = model(ids[None]).logits[0, :-1].double().log_softmax(-1)
            nll += -logp.gather(1, ids[1:, None])[:, 0]
    nll /= 2
    for i in range(3):
        a, b = res.bucket_edges[i] - 1, res.bucket_edges[i + 1] - 1
        assert res.nll[i] == pytest.approx(nll[a:b].mean().item(), rel=1e-4)


class _Oracle(torch.nn.Module):
    """Answers with the key that stands in the prompt (or a wrong one): tests the grid, not a model."""

    def __init__(self, tokenizer, wrong=False):
        super().__init__()
        self.tok, self.wrong, self.w = tokenizer, wrong, torch.nn.Parameter(torch.zeros(1))

    def generate(self, ids, **kwargs):
        text = self.tok.decode(ids[0])
        key = re.search(r"pass key is (\d+)", text).group(1)
        answer = str(int(key) + 1) if self.wrong else key
        return torch.cat([ids, torch.tensor([self.tok(" " + answer + ".")["input_ids"]])], 1)


@pytest.mark.parametrize("wrong, expected", [(False, 1.0), (True, 0.0)], ids=["oracle", "wrong"])
def test_passkey_grid_scores_answers(tokenizer, wrong, expected):
    from lr_train.toy import toy_corpus

    grid = passkey_grid(
        _Oracle(tokenizer, wrong),
        tokenizer,
        " ".join(toy_corpus(3)),
        lengths=[64, 128],
        depths=[0.0, 0.5, 1.0],
        trials=2,
        progress=False,
    )
    assert grid.accuracy == [[expected] * 2] * 3 and grid.mean == expected
    assert {e["length"] for e in grid.examples} <= {64, 128}


def test_passkey_prompt_has_requested_length(tokenizer):
    seen = []

    class Spy(_Oracle):
        def generate(self, ids, **kwargs):
            seen.append(ids.shape[1])
            return super().generate(ids, **kwargs)

    from lr_train.toy import toy_corpus

    passkey_grid(
        Spy(tokenizer),
        tokenizer,
        " ".join(toy_corpus(3)),
        lengths=[80, 200],
        depths=[0.3],
        trials=1,
        progress=False,
    )
    assert seen == [80, 200]
