"""Packing samples into fixed-token batches and collating them into the packed ("varlen") layout."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence

import torch

IGNORE_INDEX = -100


def pack_samples(lengths: Sequence[int] | torch.Tensor, tokens_per_batch: int) -> list[list[int]]:
    """Group consecutive samples into batches of at most ``tokens_per_batch`` tokens (greedy, order kept).

    Args:
        lengths: [S] tokens per sample.
        tokens_per_batch: token budget of a batch; every sample must fit on its own.

    Returns:
        list of batches, each a list of sample indices.
    """
    if not isinstance(tokens_per_batch, int) or tokens_per_batch < 1:
        raise ValueError(f"tokens_per_batch must be an int >= 1, got {tokens_per_batch!r}")
    lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if n > tokens_per_batch:
            raise ValueError(f"sample {i} has {n} tokens, more than tokens_per_batch={tokens_per_batch}")
        if current and used + n > tokens_per_batch:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches


class PackedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """``DataLoader(ds, batch_sampler=PackedBatchSampler(ds.lengths, T), collate_fn=PackedCollator())``.

    Batches come from ``pack_samples`` over the samples in a seeded shuffled order (when ``shuffle``); call
    ``set_epoch`` to get a new order per epoch. Deterministic for (seed, epoch).
    """

    def __init__(
        self,
        lengths: Sequence[int] | torch.Tensor,
        tokens_per_batch: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
        self.tokens_per_batch = tokens_per_batch
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        pack_samples(self.lengths, tokens_per_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        packed = pack_samples([self.lengths[i] for i in order], self.tokens_per_batch)
        return [[order[j] for j in batch] for batch in packed]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class PackedCollator:
    """Collate samples into one packed row, the layout of HF's ``DataCollatorWithFlattening``.

    Each feature: ``input_ids`` [L_i] and optionally ``position_ids`` [L_i] (default 0..L_i-1) and ``labels``
    [L_i] (default: the input ids). Output (T = sum L_i, B = number of samples)::

        input_ids     int64 [1, T]
        position_ids  int64 [1, T]
        labels        int64 [1, T]   -100 at the first token of every sample
        cu_seq_lens_q, cu_seq_lens_k   int32 [B+1]   explicit boundaries: remapped positions cannot be used
                                                     to guess them
        max_length_q, max_length_k     int

    Why -100 at each first token: HF models shift labels inside the loss (logits[t] is scored against
    labels[t+1]), so the last token of sample i would otherwise be trained to predict the first token of
    sample i+1. The first token of a sample is never a target of its own sample either.
    """

    def __init__(self, *, return_tensors: str = "pt") -> None:
        if return_tensors != "pt":
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")

    def __call__(self, features: Sequence[Mapping[str, object]]) -> dict[str, object]:
        if not features:
            raise ValueError("features must hold at least one sample")
        ids, pos, labels, cu = [], [], [], [0]
        for i, f in enumerate(features):
            x = torch.as_tensor(f["input_ids"], dtype=torch.int64).reshape(-1)
            if x.numel() == 0:
                raise ValueError(f"features[{i}]['input_ids'] is empty")
            p = f.get("position_ids")
            p = torch.arange(x.numel()) if p is None else torch.as_tensor(p, dtype=torch.int64).reshape(-1)
            y = f.get("labels")
            y = x.clone() if y is None else torch.as_tensor(y, dtype=torch.int64).reshape(-1).clone()
            if p.numel() != x.numel() or y.numel() != x.numel():
                raise ValueError(
                    f"features[{i}]: input_ids, position_ids and labels must have the same length"
                )
            y[0] = IGNORE_INDEX
            ids.append(x)
            pos.append(p)
            labels.append(y)
            cu.append(cu[-1] + x.numel())
        cu_seqlens = torch.tensor(cu, dtype=torch.int32)
        max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        return {
            "input_ids": torch.cat(ids)[None],
            "position_ids": torch.cat(pos)[None],
            "labels": torch.cat(labels)[None],
            "cu_seq_lens_q": cu_seqlens,
            "cu_seq_lens_k": cu_seqlens.clone(),
            "max_length_q": max_len,
            "max_length_k": max_len,
        }
