"""From tokenized documents to training samples with position ids: the four methods behind one interface.

- ``longrecipe``: split each document into segments (ending after a delimiter token), keep every segment
  holding an impactful token and the others with probability 1 - drop_ratio, concatenate the kept text
  of consecutive documents, cut it into samples of ``train_length`` tokens, then give each sample LongRecipe
  positions over ``target_length`` (``lk.remap_positions``), computed on the actual sample.
- ``pose``: plain text cut into samples of ``train_length``, PoSE positions (``lk.pose_positions``).
- ``randpos``: plain text cut likewise, RandPos positions (``lk.randpos_positions``).
- ``full``: plain text cut likewise, positions 0..L-1 (full-length training: set train_length to the target).

Every sample starts with BOS when one is given (``bos_token_id``, the tokenizer's): the kept text fills the
other ``train_length - 1`` tokens, and a sample whose text already starts with BOS gets no second one. For
``longrecipe`` the BOS is a one-token segment of its own, so it always keeps position 0.

Randomness: selection in document i uses RNG key (seed, i); positions of sample j use key (seed, j), on
separate streams. A run is reproducible for a seed and independent of batching and thread count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

import lr_kernels as lk

POSITION_METHODS = ("longrecipe", "pose", "randpos", "full")


@dataclass(frozen=True)
class PositionSettings:
    """What ``prepare`` does to the text. ``keep_prefix``: int >= 0 or "random" (longrecipe only).

    ``min_length``: a final partial sample shorter than this is dropped (default: ``train_length``, i.e. all
    samples have exactly ``train_length`` tokens).
    """

    method: str = "longrecipe"
    train_length: int = 24576
    target_length: int = 81920
    drop_ratio: float = 0.5
    keep_prefix: int | str = "random"
    seed: int = 0
    min_length: int | None = None

    def __post_init__(self) -> None:
        if self.method not in POSITION_METHODS:
            raise ValueError(f"method must be one of {POSITION_METHODS}, got {self.method!r}")
        if not isinstance(self.train_length, int) or self.train_length < 1:
            raise ValueError(f"train_length must be an int >= 1, got {self.train_length!r}")
        if not isinstance(self.target_length, int) or self.target_length < self.train_length:
            raise ValueError(
                f"target_length must be an int >= train_length ({self.train_length}), "
                f"got {self.target_length!r}"
            )
        if self.target_length >= 2**31:
            raise ValueError(
                f"target_length must be < 2**31 (positions are stored as int32), got {self.target_length}"
            )
        if not 0.0 <= float(self.drop_ratio) <= 1.0:
            raise ValueError(f"drop_ratio must lie in [0, 1], got {self.drop_ratio!r}")
        if self.keep_prefix != "random" and (not isinstance(self.keep_prefix, int) or self.keep_prefix < 0):
            raise ValueError(f"keep_prefix must be an int >= 0 or 'random', got {self.keep_prefix!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        if self.min_length is not None and not 1 <= self.min_length <= self.train_length:
            raise ValueError(f"min_length must lie in [1, train_length], got {self.min_length!r}")

    @property
    def selects(self) -> bool:
        return self.method == "longrecipe"

    def to_dict(self) -> dict:
        """The settings that shaped the data (drop_ratio / keep_prefix only for longrecipe)."""
        d = asdict(self)
        if not self.selects:
            del d["drop_ratio"], d["keep_prefix"]
        return d


@dataclass
class Sample:
    """One training sample: input_ids and position_ids int64 [L]; n_segments: text segments it holds (cut
    ones count, an added BOS does not)."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    n_segments: int


@dataclass
class SelectionStats:
    documents: int = 0
    input_tokens: int = 0
    kept_tokens: int = 0
    segments: int = 0
    kept_segments: int = 0
    impactful_segments: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class SampleBuilder:
    """Streams documents in, samples out. Feed ``add_document`` in order, then call ``finish`` once.

    Args:
        settings: the method and its parameters.
        delimiter_mask, impactful_mask: bool [V] (``lr_train.data.masks``); needed for ``longrecipe`` only.
        batch_samples: samples whose positions are computed in one batched op call.
        bos_token_id: put this token at the start of every sample (None: samples are plain text cuts).
    """

    def __init__(
        self,
        settings: PositionSettings,
        delimiter_mask: torch.Tensor | None = None,
        impactful_mask: torch.Tensor | None = None,
        *,
        batch_samples: int = 64,
        bos_token_id: int | None = None,
    ) -> None:
        if bos_token_id is not None and (isinstance(bos_token_id, bool) or int(bos_token_id) < 0):
            raise ValueError(f"bos_token_id must be an int >= 0 or None, got {bos_token_id!r}")
        if bos_token_id is not None and settings.train_length < 2:
            raise ValueError("train_length must be >= 2 when every sample starts with a BOS token")
        if settings.selects and (delimiter_mask is None or impactful_mask is None):
            raise ValueError("delimiter_mask and impactful_mask are required for method='longrecipe'")
        if (
            delimiter_mask is not None
            and impactful_mask is not None
            and delimiter_mask.shape != impactful_mask.shape
        ):
            raise ValueError(
                "delimiter_mask and impactful_mask must cover the same vocabulary, got "
                f"{tuple(delimiter_mask.shape)} "
                f"and {tuple(impactful_mask.shape)}"
            )
        self.settings = settings
        self.delimiter_mask = delimiter_mask
        self.impactful_mask = impactful_mask
        self.batch_samples = batch_samples
        self.bos_token_id = None if bos_token_id is None else int(bos_token_id)
        self.stats = SelectionStats()
        self.samples_emitted = 0
        self._tokens: list[np.ndarray] = []
        self._segments: list[int] = []
        self._buffered = 0
        self._pending: list[tuple[np.ndarray, list[int], int]] = []
        self._finished = False

    def _select(self, ids: torch.Tensor, doc_index: int) -> tuple[np.ndarray, list[int]]:
        """Kept tokens of one non-empty document and the lengths of its kept segments."""
        s = self.settings
        starts = lk.split_segments(ids, self.delimiter_mask)
        kept_idx = lk.select_segments(
            ids, starts, self.impactful_mask, s.drop_ratio, s.seed, document_index=doc_index
        )
        seg_starts = starts[:-1].numpy()
        lengths = np.diff(starts.numpy())
        token_kept = np.zeros(ids.numel(), dtype=bool)
        token_kept[kept_idx.numpy()] = True
        seg_kept = token_kept[seg_starts]
        seg_impactful = np.add.reduceat(self.impactful_mask[ids].numpy().astype(np.int64), seg_starts) > 0
        st = self.stats
        st.segments += len(lengths)
        st.kept_segments += int(seg_kept.sum())
        st.impactful_segments += int(seg_impactful.sum())
        return ids.numpy()[token_kept], lengths[seg_kept].tolist()

    def add_document(self, input_ids: Iterable[int] | np.ndarray | torch.Tensor) -> list[Sample]:
        """Add the next document (token ids); returns the samples completed by it (possibly none)."""
        if self._finished:
            raise RuntimeError("SampleBuilder.finish() was already called")
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
        if ids.dim() != 1:
            raise ValueError(f"input_ids must be 1-D, got shape {tuple(ids.shape)}")
        doc_index = self.stats.documents
        self.stats.documents += 1
        self.stats.input_tokens += ids.numel()
        if ids.numel() == 0:
            return []
        if self.settings.selects:
            tokens, segments = self._select(ids, doc_index)
        else:
            tokens, segments = ids.numpy(), [ids.numel()]
        self.stats.kept_tokens += len(tokens)
        if len(tokens):
            self._tokens.append(tokens)
            self._segments.extend(segments)
            self._buffered += len(tokens)
        out = []
        while self._buffered and self._buffered + self._bos_needed() >= self.settings.train_length:
            self._pending.append(self._cut(self.settings.train_length - self._bos_needed()))
            if len(self._pending) >= self.batch_samples:
                out.extend(self._flush())
        return out

    def _bos_needed(self) -> int:
        """1 when the next sample must get a BOS in front of the buffered text, else 0."""
        return int(self.bos_token_id is not None and int(self._tokens[0][0]) != self.bos_token_id)

    def finish(self) -> list[Sample]:
        """Emit the remaining samples (a final partial one if it reaches ``min_length``)."""
        if self._finished:
            return []
        self._finished = True
        min_length = self.settings.min_length or self.settings.train_length
        if self._buffered and self._buffered + self._bos_needed() >= min_length:
            self._pending.append(self._cut(self._buffered))
        self._tokens, self._segments, self._buffered = [], [], 0
        return self._flush()

    def _cut(self, n: int) -> tuple[np.ndarray, list[int], int]:
        """The next ``n`` buffered tokens (with a BOS in front when needed), their segment lengths, and
        how many tokens were added (0 or 1)."""
        bos = self._bos_needed()
        buf = np.concatenate(self._tokens) if len(self._tokens) > 1 else self._tokens[0]
        chunk, rest = buf[:n], buf[n:]
        self._tokens = [rest] if len(rest) else []
        self._buffered = len(rest)
        taken, used = [], 0
        i = 0
        while used < n:
            length = self._segments[i]
            if used + length > n:
                # The segment crossing the cut: its head closes this sample, its tail opens the next.
                taken.append(n - used)
                self._segments[i] = length - (n - used)
                used = n
                break
            taken.append(length)
            used += length
            i += 1
        del self._segments[:i]
        if bos:
            chunk = np.concatenate([np.array([self.bos_token_id], dtype=chunk.dtype), chunk])
            taken = [1, *taken]
        return chunk, taken, bos

    def _flush(self) -> list[Sample]:
        if not self._pending:
            return []
        s = self.settings
        first = self.samples_emitted
        chunks = self._pending
        self._pending = []
        lengths = [len(c) for c, _, _ in chunks]
        if s.method == "longrecipe":
            seg = torch.tensor([x for _, segs, _ in chunks for x in segs], dtype=torch.int64)
            offsets = torch.tensor(np.cumsum([0] + [len(segs) for _, segs, _ in chunks]), dtype=torch.int64)
            pos = lk.remap_positions(
                seg,
                s.target_length,
                s.seed,
                keep_prefix=s.keep_prefix,
                segment_offsets=offsets,
                first_document=first,
            ).numpy()
        elif s.method == "pose":
            pos = lk.pose_positions(lengths, s.target_length, s.seed, first_document=first).numpy()
        elif s.method == "randpos":
            pos = lk.randpos_positions(lengths, s.target_length, s.seed, first_document=first).numpy()
        else:
            pos = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        out, start = [], 0
        for (chunk, segs, bos), n in zip(chunks, lengths, strict=True):
            out.append(Sample(chunk.astype(np.int64), pos[start : start + n], len(segs) - bos))
            start += n
        self.samples_emitted += len(chunks)
        return out


def build_samples(
    documents: Iterable[Iterable[int]],
    settings: PositionSettings,
    delimiter_mask: torch.Tensor | None = None,
    impactful_mask: torch.Tensor | None = None,
    *,
    bos_token_id: int | None = None,
) -> Iterator[Sample]:
    """Convenience generator over ``SampleBuilder``: tokenized documents in, samples out."""
    builder = SampleBuilder(settings, delimiter_mask, impactful_mask, bos_token_id=bos_token_id)
    for doc in documents:
        yield from builder.add_document(doc)
    yield from builder.finish()
