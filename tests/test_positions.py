"""The C++ data ops (lr_kernels._C) against the plain-Python reference (bit for bit) and the method's
properties."""

import itertools
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap
from itertools import combinations

import pytest
import torch

import lr_kernels as lk
from lr_kernels.positions import naive

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

# Random123's known-answer vectors for philox4x32_10 (kat_vectors in the Random123 distribution).
PHILOX_KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


def random_segments(rng: random.Random, n: int, low: int = 1, high: int = 30) -> list[int]:
    return [rng.randint(low, high) for _ in range(n)]


def split_docs(lengths_per_doc):
    flat = torch.tensor([x for doc in lengths_per_doc for x in doc], dtype=torch.int64)
    offsets = torch.tensor([0, *itertools.accumulate(len(d) for d in lengths_per_doc)])
    return flat, offsets


def test_philox_known_answers():
    for counter, key, expected in PHILOX_KAT:
        assert naive.philox4x32_10(counter, key) == expected


# ---- split / select ------------------------------------------------------------------------------------


@pytest.fixture
def vocab_masks():
    g = torch.Generator().manual_seed(0)
    vocab = 50
    delim = torch.zeros(vocab, dtype=torch.bool)
    delim[[3, 7]] = True
    impactful = torch.zeros(vocab, dtype=torch.bool)
    impactful[[10, 11, 12]] = True
    return vocab, delim, impactful, g


@pytest.mark.parametrize("length", [0, 1, 17, 130, 2049], ids=lambda n: f"L{n}")
def test_split_segments_matches_reference_and_ends_after_delimiters(vocab_masks, length):
    vocab, delim, _, g = vocab_masks
    ids = torch.randint(0, vocab, (length,), generator=g)
    starts = lk.split_segments(ids, delim)
    assert starts.dtype == torch.int64
    assert starts.tolist() == naive.split_segments(ids.tolist(), delim.tolist())
    assert starts[0] == 0 and starts[-1] == length
    for s in range(starts.numel() - 1):
        seg = ids[starts[s] : starts[s + 1]]
        assert seg.numel() >= 1
        assert not delim[seg[:-1]].any(), "a delimiter inside a segment"
        if s < starts.numel() - 2:
            assert delim[seg[-1]], "a segment that is not the last must end with a delimiter"


def test_split_segments_document_ending_in_delimiter():
    delim = torch.tensor([False, True])
    assert lk.split_segments(torch.tensor([0, 1, 0, 0, 1]), delim).tolist() == [0, 2, 5]
    assert lk.split_segments(torch.tensor([1, 1]), delim).tolist() == [0, 1, 2]


@pytest.mark.parametrize("drop_ratio", [0.0, 0.3, 0.5, 1.0], ids=lambda r: f"drop{r}")
def test_select_segments_matches_reference(vocab_masks, drop_ratio):
    vocab, delim, impactful, g = vocab_masks
    ids = torch.randint(0, vocab, (3001,), generator=g)
    starts = lk.split_segments(ids, delim)
    for doc in (0, 5, 2**40 + 3):
        kept = lk.select_segments(ids, starts, impactful, drop_ratio, 123, document_index=doc)
        expected = naive.select_segments(
            ids.tolist(), starts.tolist(), impactful.tolist(), drop_ratio, 123, doc
        )
        assert kept.tolist() == expected


def test_select_segments_properties(vocab_masks):
    vocab, delim, impactful, g = vocab_masks
    ids = torch.randint(0, vocab, (60_000,), generator=g)
    starts = lk.split_segments(ids, delim)
    kept = lk.select_segments(ids, starts, impactful, 0.5, 7)
    keep_tok = torch.zeros(ids.numel(), dtype=torch.bool)
    keep_tok[kept] = True
    n_plain = n_plain_kept = 0
    for s in range(starts.numel() - 1):
        part = keep_tok[starts[s] : starts[s + 1]]
        assert part.all() or not part.any(), "a segment was cut"
        holds_impactful = bool(impactful[ids[starts[s] : starts[s + 1]]].any())
        if holds_impactful:
            assert part.all(), "an impactful segment was dropped"
        else:
            n_plain += 1
            n_plain_kept += int(part.all())
    # Plain segments survive with probability 0.5: stay within 5 binomial standard deviations.
    assert n_plain > 500
    assert abs(n_plain_kept - 0.5 * n_plain) < 5 * math.sqrt(0.25 * n_plain)
    assert torch.equal(kept, lk.select_segments(ids, starts, impactful, 0.5, 7)), "not repeatable for a seed"
    assert not torch.equal(kept, lk.select_segments(ids, starts, impactful, 0.5, 8)), (
        "same draws for two seeds"
    )


def test_select_segments_extreme_ratios(vocab_masks):
    vocab, delim, impactful, g = vocab_masks
    ids = torch.randint(0, vocab, (500,), generator=g)
    starts = lk.split_segments(ids, delim)
    assert lk.select_segments(ids, starts, impactful, 0.0, 1).tolist() == list(range(500))
    only = lk.select_segments(ids, starts, impactful, 1.0, 1)
    expected = [
        i
        for s in range(starts.numel() - 1)
        if impactful[ids[starts[s] : starts[s + 1]]].any()
        for i in range(int(starts[s]), int(starts[s + 1]))
    ]
    assert only.tolist() == expected


# ---- remap ---------------------------------------------------------------------------------------------


REMAP_CASES = [
    pytest.param([5], 5, 0, id="one-seg-no-gap"),
    pytest.param([1] * 17, 40, 0, id="17-single-tokens"),
    pytest.param([3, 1, 4, 1, 5, 9, 2, 6], 100, 0, id="pi-digits-no-prefix"),
    pytest.param([3, 1, 4, 1, 5, 9, 2, 6], 100, 4, id="prefix-cuts-segment"),
    pytest.param([3, 1, 4, 1, 5, 9, 2, 6], 100, 8, id="prefix-on-boundary"),
    pytest.param([3, 1, 4, 1, 5, 9, 2, 6], 100, 1000, id="prefix-longer-than-doc"),
    pytest.param([3, 1, 4, 1, 5, 9, 2, 6], 100, "random", id="random-prefix"),
    pytest.param([40] * 30 + [7], 4000, "random", id="31-segs-window4000"),
    pytest.param([2] * 600, 1300, 0, id="dense-600-segs-complement-sampling"),
]


@pytest.mark.parametrize(("lengths", "target", "prefix"), REMAP_CASES)
def test_remap_matches_reference(lengths, target, prefix):
    code = -1 if prefix == "random" else prefix
    for seed in (0, 1, 2**62 + 5):
        got = lk.remap_positions(torch.tensor(lengths), target, seed, keep_prefix=prefix)
        assert got.tolist() == naive.remap_positions([lengths], target, seed, keep_prefix=code)


def check_remap(lengths, target, positions, prefix):
    pos = positions.tolist()
    assert len(pos) == sum(lengths)
    assert pos[0] == 0
    assert all(b > a for a, b in itertools.pairwise(pos)), "positions not strictly increasing"
    assert pos[-1] < target
    start = 0
    for n in lengths:
        seg = pos[start : start + n]
        if start >= prefix:  # segments after the prefix must stay whole
            assert seg == list(range(seg[0], seg[0] + n)), "a segment is not contiguous"
        start += n
    assert pos[:prefix] == list(range(min(prefix, len(pos)))), "prefix not kept"


def test_remap_properties_on_random_documents():
    rng = random.Random(0)
    for trial in range(60):
        lengths = random_segments(rng, rng.randint(1, 50))
        target = sum(lengths) + rng.randint(0, 500)
        prefix = rng.choice([0, 0, 1, 10, sum(lengths)])
        pos = lk.remap_positions(torch.tensor(lengths), target, trial, keep_prefix=prefix)
        check_remap(lengths, target, pos, prefix)


def test_remap_random_prefix_range_and_kept():
    lengths = [7] * 20
    total = sum(lengths)
    drawn = []
    for seed in range(300):
        pos = lk.remap_positions(torch.tensor(lengths), 1000, seed, keep_prefix="random").tolist()
        # The same draw as the op's (stream PREFIX, counter 0): K ~ U[1, (L+1)//2].
        k = 1 + naive.CounterRng(seed, 0, naive.STREAM_PREFIX).bounded((total + 1) // 2)
        assert pos[:k] == list(range(k)), "random prefix not kept at its original positions"
        check_remap(lengths, 1000, torch.tensor(pos), k)
        drawn.append(k)
    assert min(drawn) <= 5 and max(drawn) >= (total + 1) // 2 - 5 and max(drawn) <= (total + 1) // 2


def test_remap_layout_is_uniform():
    # N = 3 one-token segments, G = 3 skipped positions: C(G + N - 1, N - 1) = 10 layouts, equally likely.
    lengths, target = [1, 1, 1], 6
    layouts = {tuple((0, *c)): 0 for c in combinations(range(1, 6), 2)}
    draws = 4000
    for seed in range(draws):
        layouts[tuple(lk.remap_positions(torch.tensor(lengths), target, seed).tolist())] += 1
    assert len(layouts) == 10
    expected = draws / 10
    chi2 = sum((c - expected) ** 2 / expected for c in layouts.values())
    assert chi2 < 27.9, f"layout frequencies {layouts} (chi2 {chi2:.1f}, 9 dof, p=0.001 bound 27.9)"


def test_remap_fills_window_with_gaps_spread_evenly():
    lengths = [10] * 20
    target = 1200
    gap = target - sum(lengths)
    n = len(lengths)
    gaps = torch.zeros(n, dtype=torch.float64)
    seeds = 400
    for seed in range(seeds):
        pos = lk.remap_positions(torch.tensor(lengths), target, seed)
        starts = pos[torch.arange(0, sum(lengths), 10)]
        ends = pos[torch.arange(9, sum(lengths), 10)]
        # Gap after segment i (the last one: up to the end of the window).
        after = torch.cat([starts[1:] - ends[:-1] - 1, torch.tensor([target - 1 - int(ends[-1])])])
        assert int(after.sum()) == gap
        gaps += after.double()
    mean = gaps / seeds
    # Each boundary's gap has mean G/N; sd of one gap ~ G/N, so the mean of 400 is within ~5*G/N/20.
    assert torch.allclose(
        mean, torch.full((n,), gap / n, dtype=torch.float64), atol=5 * gap / n / math.sqrt(seeds)
    )


def test_remap_seeds_and_batches():
    rng = random.Random(1)
    docs = [random_segments(rng, rng.randint(1, 40)) for _ in range(12)]
    flat, offsets = split_docs(docs)
    batch = lk.remap_positions(
        flat, 3000, 9, keep_prefix="random", segment_offsets=offsets, first_document=100
    )
    singles = torch.cat(
        [
            lk.remap_positions(torch.tensor(d), 3000, 9, keep_prefix="random", first_document=100 + i)
            for i, d in enumerate(docs)
        ]
    )
    assert torch.equal(batch, singles)
    again = lk.remap_positions(
        flat, 3000, 9, keep_prefix="random", segment_offsets=offsets, first_document=100
    )
    assert torch.equal(batch, again)
    other = lk.remap_positions(
        flat, 3000, 10, keep_prefix="random", segment_offsets=offsets, first_document=100
    )
    assert not torch.equal(batch, other)


def test_remap_empty_documents_in_batch():
    flat = torch.tensor([3, 2, 4], dtype=torch.int64)
    offsets = torch.tensor([0, 0, 2, 2, 3])
    pos = lk.remap_positions(flat, 50, 3, segment_offsets=offsets)
    assert pos.tolist() == naive.remap_positions([[], [3, 2], [], [4]], 50, 3)


def test_thread_count_does_not_change_results():
    rng = random.Random(2)
    # ~2.7M tokens: above the op's threshold for using more than one thread.
    docs = [random_segments(rng, 3000, 5, 40) for _ in range(40)]
    flat, offsets = split_docs(docs)
    lengths = torch.tensor([sum(d) for d in docs])
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(
                (
                    lk.remap_positions(flat, 81920, 5, keep_prefix="random", segment_offsets=offsets),
                    lk.pose_positions(lengths, 81920, 5),
                    lk.randpos_positions(lengths, 81920, 5),
                )
            )
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ---- baselines ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "target"), [(0, 5), (1, 1), (1, 9), (17, 17), (17, 130), (130, 400)], ids=str
)
def test_pose_and_randpos_match_reference(length, target):
    for seed in (0, 3, 2**50):
        assert lk.pose_positions(length, target, seed).tolist() == naive.pose_positions(
            [length], target, seed
        )
        assert lk.randpos_positions(length, target, seed).tolist() == naive.randpos_positions(
            [length], target, seed
        )


def test_pose_properties():
    L, target = 64, 256
    splits, skips = set(), set()
    for seed in range(300):
        pos = lk.pose_positions(L, target, seed).tolist()
        jumps = [i for i in range(1, L) if pos[i] != pos[i - 1] + 1]
        assert len(jumps) <= 1 and pos[-1] < target
        split = jumps[0] if jumps else None
        if split is not None:
            assert 1 <= split <= (L + 1) // 2 and pos[:split] == list(range(split))
            splits.add(split)
            skips.add(pos[split] - split)
    assert min(splits) == 1 and max(splits) == (L + 1) // 2
    assert max(skips) > 0.9 * (target - L)


def test_randpos_properties():
    L, target, draws = 30, 100, 2000
    hits = torch.zeros(target)
    for seed in range(draws):
        pos = lk.randpos_positions(L, target, seed)
        assert (
            pos.numel() == L
            and bool((pos[1:] > pos[:-1]).all())
            and int(pos[0]) >= 0
            and int(pos[-1]) < target
        )
        hits[pos] += 1
    p = L / target
    bound = 5 * math.sqrt(draws * p * (1 - p))
    assert bool(((hits - draws * p).abs() < bound).all()), "some position is over- or under-sampled"


def test_batched_baselines_equal_single_calls():
    lengths = [5, 0, 40, 17]
    for fn, ref in (
        (lk.pose_positions, naive.pose_positions),
        (lk.randpos_positions, naive.randpos_positions),
    ):
        batch = fn(torch.tensor(lengths), 60, 4, first_document=7)
        assert batch.tolist() == ref(lengths, 60, 4, first_document=7)


# ---- argument checking -----------------------------------------------------------------------------------


def test_bad_arguments_raise_value_error_naming_them():
    delim = torch.zeros(10, dtype=torch.bool)
    with pytest.raises(ValueError, match="input_ids"):
        lk.split_segments(torch.tensor([1.0]), delim)
    with pytest.raises(ValueError, match="input_ids"):
        lk.split_segments(torch.tensor([10]), delim)
    with pytest.raises(ValueError, match="delimiter_mask"):
        lk.split_segments(torch.tensor([1]), delim.long())
    ids = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="drop_ratio"):
        lk.select_segments(ids, torch.tensor([0, 3]), delim, 1.5, 0)
    with pytest.raises(ValueError, match="segment_starts"):
        lk.select_segments(ids, torch.tensor([0, 2]), delim, 0.5, 0)
    with pytest.raises(ValueError, match="seed"):
        lk.select_segments(ids, torch.tensor([0, 3]), delim, 0.5, -1)
    with pytest.raises(ValueError, match="target_length"):
        lk.remap_positions(torch.tensor([5, 6]), 10, 0)
    with pytest.raises(ValueError, match="segment_lengths"):
        lk.remap_positions(torch.tensor([5, 0]), 10, 0)
    with pytest.raises(ValueError, match="keep_prefix"):
        lk.remap_positions(torch.tensor([5]), 10, 0, keep_prefix="sometimes")
    with pytest.raises(ValueError, match="keep_prefix"):
        lk.remap_positions(torch.tensor([5]), 10, 0, keep_prefix=-1)
    with pytest.raises(ValueError, match="segment_offsets"):
        lk.remap_positions(torch.tensor([5]), 10, 0, segment_offsets=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="length"):
        lk.pose_positions(11, 10, 0)
    with pytest.raises(ValueError, match="length"):
        lk.randpos_positions(torch.tensor([1.0]), 10, 0)


# ---- registration ---------------------------------------------------------------------------------------


def opcheck_cases():
    ids = torch.tensor([4, 3, 9, 7, 1, 3, 3, 8])
    delim = torch.zeros(10, dtype=torch.bool)
    delim[3] = True
    starts = torch.tensor([0, 2, 6, 7, 8])
    return [
        pytest.param("split_segments", (ids, delim), id="split_segments"),
        pytest.param("select_segments", (ids, starts, delim, 0.5, 3, 0), id="select_segments"),
        pytest.param(
            "remap_positions", (torch.tensor([3, 2, 4]), torch.tensor([0, 1, 3]), 20, 1, -1, 0), id="remap"
        ),
        pytest.param("pose_positions", (torch.tensor([5, 0, 7]), 30, 2, 0), id="pose"),
        pytest.param("randpos_positions", (torch.tensor([5, 0, 7]), 30, 2, 0), id="randpos"),
    ]


@pytest.mark.parametrize(("name", "args"), opcheck_cases())
def test_torch_library_opcheck(name, args):
    lk.positions.extension_available()
    op = getattr(torch.ops.lr_kernels, name).default
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_missing_extension_gives_build_instructions(monkeypatch):
    from lr_kernels.positions import ops

    monkeypatch.setattr(ops, "_loaded", False)
    monkeypatch.setitem(sys.modules, "lr_kernels._C", None)  # what an unbuilt checkout looks like to import
    with pytest.raises(ImportError, match="build_ext --inplace"):
        lk.remap_positions(torch.tensor([1]), 4, 0)


# ---- the header compiled as plain host code ---------------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    // Reads: n_docs target prefix seed first_doc, then per document: n_segments lengths...
    // Prints the positions (remap_positions_cpu with 2 OpenMP threads) and a Philox block.
    #include <cstdio>
    #include <vector>
    #include "lr_positions.h"
    #include "positions_launch.h"
    int main() {
      long long n_docs, target, prefix; unsigned long long seed, first;
      if (scanf("%lld %lld %lld %llu %llu", &n_docs, &target, &prefix, &seed, &first) != 5) return 1;
      std::vector<int64_t> lengths, seg{0}, tok{0};
      for (long long d = 0; d < n_docs; ++d) {
        long long n; if (scanf("%lld", &n) != 1) return 1;
        long long total = 0;
        for (long long i = 0; i < n; ++i) {
          long long x; if (scanf("%lld", &x) != 1) return 1;
          lengths.push_back(x); total += x;
        }
        seg.push_back(seg.back() + n); tok.push_back(tok.back() + total);
      }
      std::vector<int64_t> out(tok.back());
      lr::remap_positions_cpu(lengths.data(), seg.data(), tok.data(), n_docs, target, prefix, seed, first,
                              out.data(), 2);
      for (int64_t p : out) printf("%lld ", (long long)p);
      lr::Block4 c{0x243F6A88u, 0x85A308D3u, 0x13198A2Eu, 0x03707344u};
      lr::Block4 b = lr::philox4x32_10(c, 0xA4093822u, 0x299F31D0u);
      printf("\\n%u %u %u %u\\n", b.x0, b.x1, b.x2, b.x3);
      return 0;
    }
    """
)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler")
def test_header_as_host_code_matches_op_with_other_thread_count(tmp_path):
    src = tmp_path / "driver.cpp"
    src.write_text(DRIVER)
    exe = tmp_path / "driver"
    subprocess.run(
        [
            "g++",
            "-O2",
            "-std=c++17",
            "-fopenmp",
            f"-I{CSRC}",
            str(src),
            os.path.join(CSRC, "positions_cpu.cpp"),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
    )
    rng = random.Random(3)
    docs = [random_segments(rng, rng.randint(1, 80), 1, 50) for _ in range(9)]
    target = 5000
    stdin = f"{len(docs)} {target} -1 {2**61 + 17} 4\n" + "\n".join(
        f"{len(d)} " + " ".join(map(str, d)) for d in docs
    )
    run = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True)
    positions, philox = run.stdout.strip().split("\n")
    flat, offsets = split_docs(docs)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        op = lk.remap_positions(
            flat, target, 2**61 + 17, keep_prefix="random", segment_offsets=offsets, first_document=4
        )
    finally:
        torch.set_num_threads(before)
    assert [int(x) for x in positions.split()] == op.tolist()
    assert [int(x) for x in philox.split()] == PHILOX_KAT[2][2]


# ---- CUDA agrees with CPU ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_bit_for_bit():
    rng = random.Random(4)
    vocab = 100
    delim = torch.rand(vocab, generator=torch.Generator().manual_seed(0)) < 0.1
    impactful = torch.rand(vocab, generator=torch.Generator().manual_seed(1)) < 0.1
    ids = torch.randint(0, vocab, (20_000,), generator=torch.Generator().manual_seed(2))
    starts = lk.split_segments(ids, delim)
    assert torch.equal(lk.split_segments(ids.cuda(), delim.cuda()).cpu(), starts)
    kept = lk.select_segments(ids, starts, impactful, 0.5, 11, document_index=3)
    kept_cuda = lk.select_segments(ids.cuda(), starts.cuda(), impactful.cuda(), 0.5, 11, document_index=3)
    assert torch.equal(kept_cuda.cpu(), kept)
    docs = [random_segments(rng, rng.randint(1, 400), 1, 60) for _ in range(40)]
    flat, offsets = split_docs(docs)
    for prefix in (0, 17, "random"):
        cpu = lk.remap_positions(flat, 81920, 5, keep_prefix=prefix, segment_offsets=offsets)
        gpu = lk.remap_positions(flat.cuda(), 81920, 5, keep_prefix=prefix, segment_offsets=offsets.cuda())
        assert torch.equal(gpu.cpu(), cpu)
    lengths = torch.tensor([sum(d) for d in docs])
    for fn in (lk.pose_positions, lk.randpos_positions):
        assert torch.equal(fn(lengths.cuda(), 81920, 5).cpu(), fn(lengths, 81920, 5))
