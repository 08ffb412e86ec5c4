"""Public wrappers of the C++/CUDA data ops (``torch.ops.lr_kernels.*``, built as ``lr_kernels._C``).

Every argument is validated (ValueError naming it) before any kernel runs: types, ranks, dtypes, devices and
scalars here; value checks over the data (lengths >= 1, ids inside the vocabulary, offsets that run from 0
to the end) in the C++ binding, as single host loops that also raise ValueError.
Tensor arguments may be strided views: the binding copies them to contiguous before any loop or kernel
reads them, and the CUDA kernels run on the inputs' device (device guard) and its current stream.
Randomness comes from a counter-based generator (Philox4x32-10) keyed by ``seed`` and the document index:
results are identical on CPU and CUDA, for any thread count, and repeat exactly for a seed. The plain-Python
reference with the same numbers is ``lr_kernels.positions.naive``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from lr_kernels._common import check_tensor

_SEED_LIMIT = 2**63
_BUILD_HINT = (
    "lr_kernels._C (the C++/CUDA data ops) is not built. From a source checkout run "
    "`python setup.py build_ext --inplace`, or install with `pip install --no-build-isolation .`"
)
_loaded = False
_fakes_registered = False


def _ops():
    """torch.ops.lr_kernels after importing the extension once; ImportError with the fix if it is missing."""
    global _loaded
    if not _loaded:
        try:
            importlib.import_module("lr_kernels._C")
        except ImportError as exc:
            raise ImportError(f"{_BUILD_HINT} ({exc})") from exc
        if not _fakes_registered:
            _register_fakes()
        _loaded = True
    return torch.ops.lr_kernels


def _register_fakes() -> None:
    """Shape functions for torch.compile / FakeTensor: every output is a 1-D int64 tensor whose length
    depends on the data (kept tokens, segment count, total tokens), hence a dynamic size."""

    def dynamic_1d(like: torch.Tensor) -> torch.Tensor:
        return like.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.int64)

    fakes = {
        "split_segments": lambda input_ids, delimiter_mask: dynamic_1d(input_ids),
        "select_segments": lambda input_ids, *args: dynamic_1d(input_ids),
        "remap_positions": lambda segment_lengths, *args: dynamic_1d(segment_lengths),
        "pose_positions": lambda lengths, *args: dynamic_1d(lengths),
        "randpos_positions": lambda lengths, *args: dynamic_1d(lengths),
    }
    global _fakes_registered
    for name, fn in fakes.items():
        torch.library.register_fake(f"lr_kernels::{name}", fn)
    _fakes_registered = True


def extension_available() -> bool:
    """True when ``lr_kernels._C`` imports."""
    try:
        _ops()
    except ImportError:
        return False
    return True


def _check_int(name: str, value: object, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value >= high):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_mask(name: str, mask: object, device: torch.device) -> torch.Tensor:
    check_tensor(name, mask, ndim=1, dtypes=(torch.bool,), device=device)
    if mask.numel() == 0:
        raise ValueError(f"{name} must cover the vocabulary (one bool per token id), got an empty tensor")
    return mask


def split_segments(input_ids: torch.Tensor, delimiter_mask: torch.Tensor) -> torch.Tensor:
    """Split one document into segments that end after a delimiter token.

    Args:
        input_ids: int64 [L], one document.
        delimiter_mask: bool [V], True for token ids that end a segment (``lr_train.data.delimiter_mask``).

    Returns:
        int64 [S+1] segment starts on the same device: segment s is ``input_ids[starts[s]:starts[s+1]]``;
        ``starts[0] == 0`` and ``starts[-1] == L`` (``[0]`` for an empty document).

    Raises:
        ValueError: wrong rank/dtype/device, or token ids outside the mask's vocabulary.
    """
    check_tensor("input_ids", input_ids, ndim=1, dtypes=(torch.int64,))
    _check_mask("delimiter_mask", delimiter_mask, input_ids.device)
    return _ops().split_segments(input_ids, delimiter_mask)


def select_segments(
    input_ids: torch.Tensor,
    segment_starts: torch.Tensor,
    impactful_mask: torch.Tensor,
    drop_ratio: float,
    seed: int,
    *,
    document_index: int = 0,
) -> torch.Tensor:
    """LongRecipe's data selection: keep whole segments, every one holding an impactful token.

    A segment without an impactful token is dropped with probability ``drop_ratio``; the draw for segment s
    is a pure function of (seed, document_index, s), so two documents given different ``document_index``
    get independent decisions and a rerun repeats exactly.

    Args:
        input_ids: int64 [L], one document.
        segment_starts: int64 [S+1] from ``split_segments`` (non-decreasing, 0 .. L).
        impactful_mask: bool [V], True for impactful token ids (digits by default, see lr_train.data).
        drop_ratio: float in [0, 1].
        seed: int in [0, 2**63).
        document_index: int >= 0, the document's RNG key.

    Returns:
        int64 [K] indices into ``input_ids`` of the kept tokens, increasing.
    """
    check_tensor("input_ids", input_ids, ndim=1, dtypes=(torch.int64,))
    check_tensor("segment_starts", segment_starts, ndim=1, dtypes=(torch.int64,), device=input_ids.device)
    _check_mask("impactful_mask", impactful_mask, input_ids.device)
    if (
        isinstance(drop_ratio, bool)
        or not isinstance(drop_ratio, (int, float))
        or not 0.0 <= drop_ratio <= 1.0
    ):
        raise ValueError(f"drop_ratio must be a float in [0, 1], got {drop_ratio!r}")
    _check_int("seed", seed, high=_SEED_LIMIT)
    _check_int("document_index", document_index, high=_SEED_LIMIT)
    return _ops().select_segments(
        input_ids, segment_starts, impactful_mask, float(drop_ratio), seed, document_index
    )


def _keep_prefix_code(keep_prefix: int | str) -> int:
    if keep_prefix == "random":
        return -1
    if isinstance(keep_prefix, str):
        raise ValueError(f"keep_prefix must be an int >= 0 or 'random', got {keep_prefix!r}")
    return _check_int("keep_prefix", keep_prefix)


def remap_positions(
    segment_lengths: torch.Tensor,
    target_length: int,
    seed: int,
    *,
    keep_prefix: int | str = 0,
    segment_offsets: torch.Tensor | None = None,
    first_document: int = 0,
) -> torch.Tensor:
    """LongRecipe position index transformation: spread short documents over a long position window.

    For a document of N segments (total L <= target_length tokens) the positions are contiguous inside each
    segment, start at 0, and the G = target_length - L skipped positions are spread over the N boundaries
    that follow the segments (N-1 between segments and one after the last) uniformly at random — exactly the
    layouts of placing the N segments on distinct slots among G + N slots with the first one at slot 0.
    Positions are strictly increasing and below ``target_length``.

    keep_prefix:
        0: no prefix. K > 0: the first min(K, L) tokens keep positions 0..K-1 and count as the first
        block; the token after the prefix starts a new block (the segment the prefix cuts keeps its tail as
        its own block), and the remaining blocks are placed as above. "random": K is drawn per document
        uniformly from [1, (L+1)//2] — the PoSE-style prefix of the LongRecipe code.

    Args:
        segment_lengths: int64 [S], every entry >= 1; the segments of all documents, one after the other.
        target_length: the position window (e.g. 81920).
        seed: int in [0, 2**63).
        segment_offsets: int64 [B+1] — document d owns ``segment_lengths[offsets[d]:offsets[d+1]]``.
            None: a single document.
        first_document: RNG key of the first document (document d uses first_document + d), so a stream of
            batches can keep global document numbers.

    Returns:
        int64 [sum(segment_lengths)] positions on the device of ``segment_lengths``, documents concatenated.
    """
    check_tensor("segment_lengths", segment_lengths, ndim=1, dtypes=(torch.int64,))
    if segment_offsets is None:
        segment_offsets = torch.tensor(
            [0, segment_lengths.numel()], dtype=torch.int64, device=segment_lengths.device
        )
    check_tensor(
        "segment_offsets", segment_offsets, ndim=1, dtypes=(torch.int64,), device=segment_lengths.device
    )
    _check_int("target_length", target_length)
    _check_int("seed", seed, high=_SEED_LIMIT)
    _check_int("first_document", first_document, high=_SEED_LIMIT)
    prefix = _keep_prefix_code(keep_prefix)
    return _ops().remap_positions(
        segment_lengths, segment_offsets, target_length, seed, prefix, first_document
    )


def _lengths_tensor(length: int | Sequence[int] | torch.Tensor, target_length: int) -> torch.Tensor:
    if isinstance(length, torch.Tensor):
        check_tensor("length", length, ndim=1, dtypes=(torch.int64,))
        lengths = length
    elif isinstance(length, int) and not isinstance(length, bool):
        lengths = torch.tensor([length], dtype=torch.int64)
    elif isinstance(length, Sequence) and all(isinstance(x, int) and not isinstance(x, bool) for x in length):
        lengths = torch.tensor(list(length), dtype=torch.int64).reshape(-1)
    else:
        raise ValueError(
            f"length must be an int, a sequence of ints or an int64 tensor, got {type(length).__name__}"
        )
    _check_int("target_length", target_length)
    return lengths


def randpos_positions(
    length: int | Sequence[int] | torch.Tensor, target_length: int, seed: int, *, first_document: int = 0
) -> torch.Tensor:
    """RandPos baseline (randomized positional encodings): a sorted uniform subset of [0, target_length).

    Every subset of size L is equally likely; position 0 is not forced (as in Ruoss et al., 2023 and the
    method's description "a sorted random subset of size L_train from [0, L_target)").

    Args:
        length: L for one document, or int64 [B] lengths (a tensor's device picks CPU or CUDA).
        target_length: the window; every L <= target_length.
        seed, first_document: RNG key, as in ``remap_positions``.

    Returns:
        int64 [sum(L)] positions, strictly increasing within each document, documents concatenated.
    """
    lengths = _lengths_tensor(length, target_length)
    _check_int("seed", seed, high=_SEED_LIMIT)
    _check_int("first_document", first_document, high=_SEED_LIMIT)
    return _ops().randpos_positions(lengths, target_length, seed, first_document)


def pose_positions(
    length: int | Sequence[int] | torch.Tensor, target_length: int, seed: int, *, first_document: int = 0
) -> torch.Tensor:
    """PoSE baseline (Zhu et al., 2024) with two chunks, as in the paper.

    The first chunk, l1 ~ U[1, (L+1)//2] tokens, keeps positions 0..l1-1; the second chunk is shifted by a
    skip ~ U[0, target_length - L], so it covers l1+skip .. L-1+skip.

    Args:
        length: L for one document, or int64 [B] lengths (a tensor's device picks CPU or CUDA).
        target_length: the window; every L <= target_length.
        seed, first_document: RNG key, as in ``remap_positions``.

    Returns:
        int64 [sum(L)] positions, documents concatenated.
    """
    lengths = _lengths_tensor(length, target_length)
    _check_int("seed", seed, high=_SEED_LIMIT)
    _check_int("first_document", first_document, high=_SEED_LIMIT)
    return _ops().pose_positions(lengths, target_length, seed, first_document)
