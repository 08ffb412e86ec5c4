"""Plain-Python reference of the data ops: the test oracle (bit for bit, same counter-based RNG) and the
slow side of the speed comparison.

Written for reading, not speed: lists and ints only, one document at a time. Every function here gives
exactly the numbers of the C++/CUDA ops in ``lr_kernels.positions`` for the same arguments.

Also here: ``reference_remap``, the position layout of the public LongRecipe code (sample slots with
``random.sample`` over the whole window, flatten, scan), for the benchmark. It uses Python's ``random`` and is
not bit-compatible with the ops; it stands for "what the reference preprocessing costs".
"""

from __future__ import annotations

import random
from collections.abc import Sequence

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

STREAM_SELECT = 1
STREAM_PREFIX = 2
STREAM_REMAP = 3
STREAM_POSE = 4
STREAM_RANDPOS = 5


def philox4x32_10(counter: Sequence[int], key: Sequence[int]) -> list[int]:
    """Philox4x32-10 block function: four 32-bit counter words and two key words -> four 32-bit words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (
            ((p1 >> 32) ^ c1 ^ k0) & MASK32,
            p1 & MASK32,
            ((p0 >> 32) ^ c3 ^ k1) & MASK32,
            p0 & MASK32,
        )
        k0 = (k0 + 0x9E3779B9) & MASK32
        k1 = (k1 + 0xBB67AE85) & MASK32
    return [c0, c1, c2, c3]


def philox_block(seed: int, doc: int, stream: int, block: int) -> list[int]:
    """Block ``block`` of the stream (seed, document, stream tag): the counter layout of lr_positions.h."""
    counter = [block & MASK32, (block >> 32) & MASK32, doc & MASK32, ((doc >> 32) ^ (stream << 24)) & MASK32]
    return philox4x32_10(counter, [seed & MASK32, (seed >> 32) & MASK32])


def draw_at(seed: int, doc: int, stream: int, index: int) -> int:
    """The index-th 64-bit word of a stream, drawn without sequential state."""
    b = philox_block(seed, doc, stream, index)
    return b[0] | (b[1] << 32)


class CounterRng:
    """Sequential 64-bit draws from one (seed, document, stream); two words per Philox block."""

    def __init__(self, seed: int, doc: int, stream: int) -> None:
        self.seed, self.doc, self.stream = seed, doc, stream
        self.block = 0
        self.spare: int | None = None

    def next_u64(self) -> int:
        if self.spare is not None:
            word, self.spare = self.spare, None
            return word
        b = philox_block(self.seed, self.doc, self.stream, self.block)
        self.block += 1
        self.spare = b[2] | (b[3] << 32)
        return b[0] | (b[1] << 32)

    def bounded(self, n: int) -> int:
        """Uniform integer in [0, n): Lemire's multiply-shift with rejection (exactly uniform)."""
        x = self.next_u64()
        if (x * n) & MASK64 < n:
            threshold = ((1 << 64) - n) % n
            while (x * n) & MASK64 < threshold:
                x = self.next_u64()
        return (x * n) >> 64


def sample_subset(rng: CounterRng, n: int, k: int) -> list[int]:
    """Sorted uniform k-subset of range(n) by Floyd's algorithm (the complement when k > n/2)."""
    complement = 2 * k > n
    m = n - k if complement else k
    chosen: set[int] = set()
    for j in range(n - m, n):
        t = rng.bounded(j + 1)
        chosen.add(j if t in chosen else t)
    if complement:
        return [i for i in range(n) if i not in chosen]
    return sorted(chosen)


def split_segments(input_ids: Sequence[int], delimiter_mask: Sequence[bool]) -> list[int]:
    """Segment starts [S+1] of one document: a segment ends after each delimiter token."""
    starts = [0] if input_ids else []
    for i in range(1, len(input_ids)):
        if delimiter_mask[input_ids[i - 1]]:
            starts.append(i)
    starts.append(len(input_ids))
    return starts


def select_segments(
    input_ids: Sequence[int],
    segment_starts: Sequence[int],
    impactful_mask: Sequence[bool],
    drop_ratio: float,
    seed: int,
    document_index: int = 0,
) -> list[int]:
    """Indices of kept tokens: whole segments, every impactful one, the others with prob 1 - drop_ratio."""
    threshold = int(drop_ratio * 2**53)
    kept = []
    for s in range(len(segment_starts) - 1):
        begin, end = segment_starts[s], segment_starts[s + 1]
        impactful = any(impactful_mask[input_ids[i]] for i in range(begin, end))
        survives = (draw_at(seed, document_index, STREAM_SELECT, s) >> 11) >= threshold
        if impactful or survives:
            kept.extend(range(begin, end))
    return kept


def remap_document(
    segment_lengths: Sequence[int], target_length: int, seed: int, doc: int, keep_prefix: int = 0
) -> list[int]:
    """LongRecipe positions of one document (keep_prefix: 0 none, K > 0 fixed, -1 random in [1, (L+1)//2])."""
    total = sum(segment_lengths)
    if total == 0:
        return []
    prefix = keep_prefix
    if prefix < 0:
        prefix = 1 + CounterRng(seed, doc, STREAM_PREFIX).bounded((total + 1) // 2)
    prefix = min(prefix, total)

    # Blocks placed on the slot line: the prefix (segments it covers merged, the one it cuts split), then
    # the remaining segments.
    if prefix > 0:
        blocks = [prefix]
        covered = 0
        for length in segment_lengths:
            if covered >= prefix:
                blocks.append(length)
            elif covered + length > prefix:
                blocks.append(covered + length - prefix)
            covered += length
    else:
        blocks = list(segment_lengths)

    rng = CounterRng(seed, doc, STREAM_REMAP)
    n_slots = target_length - total + len(blocks) - 1
    slots = [0] + [s + 1 for s in sample_subset(rng, n_slots, len(blocks) - 1)]

    positions = []
    tokens_before = 0
    for b, (length, slot) in enumerate(zip(blocks, slots, strict=True)):
        start = tokens_before + slot - b
        positions.extend(range(start, start + length))
        tokens_before += length
    return positions


def remap_positions(
    segment_lengths: Sequence[Sequence[int]],
    target_length: int,
    seed: int,
    *,
    keep_prefix: int = 0,
    first_document: int = 0,
) -> list[int]:
    """Concatenated positions of several documents, document d keyed by first_document + d."""
    out = []
    for d, lengths in enumerate(segment_lengths):
        out.extend(remap_document(lengths, target_length, seed, first_document + d, keep_prefix))
    return out


def pose_document(length: int, target_length: int, seed: int, doc: int) -> list[int]:
    """PoSE with two chunks: split ~ U[1, (L+1)//2], the second chunk skipped by U[0, target - L]."""
    if length == 0:
        return []
    rng = CounterRng(seed, doc, STREAM_POSE)
    split = 1 + rng.bounded((length + 1) // 2)
    skip = rng.bounded(target_length - length + 1)
    return [t if t < split else t + skip for t in range(length)]


def randpos_document(length: int, target_length: int, seed: int, doc: int) -> list[int]:
    """Sorted uniform subset of `length` positions from range(target_length)."""
    if length == 0:
        return []
    return sample_subset(CounterRng(seed, doc, STREAM_RANDPOS), target_length, length)


def pose_positions(
    lengths: Sequence[int], target_length: int, seed: int, *, first_document: int = 0
) -> list[int]:
    """Concatenated PoSE positions of several documents."""
    out = []
    for d, length in enumerate(lengths):
        out.extend(pose_document(length, target_length, seed, first_document + d))
    return out


def randpos_positions(
    lengths: Sequence[int], target_length: int, seed: int, *, first_document: int = 0
) -> list[int]:
    """Concatenated RandPos positions of several documents."""
    out = []
    for d, length in enumerate(lengths):
        out.extend(randpos_document(length, target_length, seed, first_document + d))
    return out


def reference_remap(segment_lengths: Sequence[int], target_length: int, rng: random.Random) -> list[int]:
    """The public LongRecipe preprocessing's layout algorithm, in its own style, for the speed baseline.

    It materialises the whole window as a list of slots, samples the segment slots with ``random.sample``,
    flattens the token indices and scans the window for the occupied positions. (The reference also prepends
    one extra position; that quirk is left out so that the output has one position per token.)
    """
    total = sum(segment_lengths)
    index, start = [], 0
    for length in segment_lengths:
        index.append(list(range(start, start + length)))
        start += length
    slots: list[object] = [0] * (target_length - total + len(index))
    insert = sorted(rng.sample(range(len(slots)), len(index)))
    slots[0] = index[0]
    for slot, idx in zip(insert[1:], index[1:], strict=True):
        slots[slot] = idx
    flat: list[int] = []
    for item in slots:
        if isinstance(item, list):
            flat.extend(item)
        else:
            flat.append(item)
    return [p for p in range(len(flat)) if flat[p] != 0 or p == 0]
