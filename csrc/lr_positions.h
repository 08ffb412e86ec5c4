// Per-document logic of the LongRecipe data ops, shared verbatim by the CPU loops (positions_cpu.cpp)
// and the CUDA kernels (positions_cuda.cu), so the two can never drift apart.
//
// Everything here is integer arithmetic on a counter-based RNG (Philox4x32-10 keyed by the seed, with the
// document index, a stream tag and a draw counter as the counter). No floating point, no transcendental
// functions, no state shared between documents: a result depends only on (seed, document index, inputs),
// never on the device, the thread count or the order documents are processed in.
//
// No torch, no STL: this header must compile with plain nvcc and with any C++17 host compiler.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define LR_HD __host__ __device__ __forceinline__
#else
#define LR_HD inline
#endif

namespace lr {

// Stream tags keep the draws of different purposes independent for the same (seed, document).
enum Stream : uint32_t {
  kStreamSelect = 1,
  kStreamPrefix = 2,
  kStreamRemap = 3,
  kStreamPose = 4,
  kStreamRandpos = 5,
};

LR_HD uint64_t mulhi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return (uint64_t)(((unsigned __int128)a * (unsigned __int128)b) >> 64);
#endif
}

LR_HD int count_trailing_zeros64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __ffsll((long long)x) - 1;
#else
  return __builtin_ctzll(x);
#endif
}

struct Block4 {
  uint32_t x0, x1, x2, x3;
};

// Philox4x32-10 (Salmon et al., SC'11), the generator behind curand's and torch's counter-based RNG.
LR_HD Block4 philox4x32_10(Block4 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = (uint64_t)0xD2511F53u * c.x0;
    const uint64_t p1 = (uint64_t)0xCD9E8D57u * c.x2;
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c = Block4{hi1 ^ c.x1 ^ k0, lo1, hi0 ^ c.x3 ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// Counter layout: (block lo, block hi, document lo, document hi ^ stream << 24). Documents below 2**56
// therefore never collide across streams.
LR_HD Block4 philox_block(uint64_t seed, uint64_t doc, uint32_t stream, uint64_t block) {
  Block4 c{(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)doc, (uint32_t)(doc >> 32) ^ (stream << 24)};
  return philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
}

// The i-th 64-bit word of a stream without sequential state: lets one GPU thread per segment draw its
// own keep/drop decision. Word i is the low half of block i.
LR_HD uint64_t draw_at(uint64_t seed, uint64_t doc, uint32_t stream, uint64_t index) {
  const Block4 b = philox_block(seed, doc, stream, index);
  return (uint64_t)b.x0 | ((uint64_t)b.x1 << 32);
}

// Sequential 64-bit draws from one (seed, document, stream): each Philox block gives two words.
struct CounterRng {
  uint64_t seed, doc;
  uint32_t stream;
  uint64_t block;
  uint64_t spare;
  bool has_spare;

  LR_HD CounterRng(uint64_t seed_, uint64_t doc_, uint32_t stream_)
      : seed(seed_), doc(doc_), stream(stream_), block(0), spare(0), has_spare(false) {}

  LR_HD uint64_t next_u64() {
    if (has_spare) {
      has_spare = false;
      return spare;
    }
    const Block4 b = philox_block(seed, doc, stream, block++);
    spare = (uint64_t)b.x2 | ((uint64_t)b.x3 << 32);
    has_spare = true;
    return (uint64_t)b.x0 | ((uint64_t)b.x1 << 32);
  }

  // Exactly uniform integer in [0, range), range >= 1 (Lemire's multiply-shift with rejection; the
  // rejection branch is taken with probability < range / 2**64).
  LR_HD uint64_t bounded(uint64_t range) {
    uint64_t x = next_u64();
    uint64_t lo = x * range;
    if (lo < range) {
      const uint64_t threshold = (0 - range) % range;
      while (lo < threshold) {
        x = next_u64();
        lo = x * range;
      }
    }
    return mulhi64(x, range);
  }
};

LR_HD int64_t bitmap_words(int64_t nbits) { return (nbits + 63) / 64; }

// Uniform random k-subset of {0, ..., n-1} as a bitmap of bitmap_words(n) words (Floyd's algorithm:
// min(k, n-k) draws, no rejection of duplicates). Draws the complement when k > n/2 so that dense
// subsets (RandPos at 30% of the window, remaps with many one-token segments) stay cheap.
LR_HD void sample_subset(CounterRng& rng, int64_t n, int64_t k, uint64_t* bits) {
  const int64_t words = bitmap_words(n);
  for (int64_t w = 0; w < words; ++w) bits[w] = 0;
  const bool complement = 2 * k > n;
  const int64_t m = complement ? n - k : k;
  for (int64_t j = n - m; j < n; ++j) {
    const int64_t t = (int64_t)rng.bounded((uint64_t)(j + 1));
    const uint64_t tbit = (uint64_t)1 << (t & 63);
    if (bits[t >> 6] & tbit) {
      bits[j >> 6] |= (uint64_t)1 << (j & 63);
    } else {
      bits[t >> 6] |= tbit;
    }
  }
  if (complement) {
    for (int64_t w = 0; w < words; ++w) bits[w] = ~bits[w];
    if (n & 63) bits[words - 1] &= ((uint64_t)1 << (n & 63)) - 1;
  }
}

// ---- split / select -------------------------------------------------------------------------------

// A segment starts at token 0 and after every delimiter token (the delimiter ends its segment).
LR_HD bool starts_segment(const int64_t* ids, const bool* delimiter_mask, int64_t i) {
  return i == 0 || delimiter_mask[ids[i - 1]];
}

// drop_threshold53 = drop_ratio * 2**53, computed once on the host: drop_ratio 0 never drops, 1 always.
LR_HD bool keep_segment(const int64_t* ids, int64_t begin, int64_t end, const bool* impactful_mask,
                        uint64_t drop_threshold53, uint64_t seed, uint64_t doc, int64_t segment) {
  for (int64_t i = begin; i < end; ++i) {
    if (impactful_mask[ids[i]]) return true;
  }
  return (draw_at(seed, doc, kStreamSelect, (uint64_t)segment) >> 11) >= drop_threshold53;
}

// ---- position generators (one document each) ------------------------------------------------------

// Most blocks remap_layout can produce for a document of n_segments segments (the prefix may cut one).
LR_HD int64_t max_remap_blocks(int64_t n_segments) { return n_segments + 1; }

// LongRecipe position index transformation of one document made of n_segments segments (lengths >= 1,
// total L <= target), as a block layout. keep_prefix: 0 = none, K > 0 = the first min(K, L) tokens keep
// 0..K-1, -1 = K drawn uniformly from [1, (L+1)//2]. The prefix is one block at slot 0; the token right after
// it starts a new block (the segment it cut keeps its tail). The N blocks take slot 0 and a uniform
// (N-1)-subset of the slots 1..G+N-1 (G = target - L), i.e. the gaps are a uniform weak composition of G over
// the N boundaries after each block.
// Writes block b's first token index to block_token[b] (block_token[N] = L) and its first position to
// block_position[b]; returns N (0 for an empty document). bits: bitmap_words(target) words of scratch;
// block_token: max_remap_blocks(n_segments) + 1 entries, block_position: max_remap_blocks(n_segments).
LR_HD int64_t remap_layout(const int64_t* lengths, int64_t n_segments, int64_t target, int64_t keep_prefix,
                           uint64_t seed, uint64_t doc, uint64_t* bits, int64_t* block_token,
                           int64_t* block_position) {
  int64_t total = 0;
  for (int64_t s = 0; s < n_segments; ++s) total += lengths[s];
  block_token[0] = 0;
  if (total == 0) return 0;

  int64_t prefix = keep_prefix;
  if (prefix < 0) {
    CounterRng prefix_rng(seed, doc, kStreamPrefix);
    prefix = 1 + (int64_t)prefix_rng.bounded((uint64_t)((total + 1) / 2));
  }
  if (prefix > total) prefix = total;

  // Segments fully inside the prefix merge into it; `tail` is what remains of the segment it cuts.
  int64_t next = 0, covered = 0;
  while (next < n_segments && covered + lengths[next] <= prefix) covered += lengths[next++];
  int64_t first_len, tail = 0;
  if (prefix > 0) {
    first_len = prefix;
    if (next < n_segments) tail = covered + lengths[next++] - prefix;
  } else {
    first_len = lengths[0];
    next = 1;
  }
  const int64_t n_blocks = 1 + (tail > 0 ? 1 : 0) + (n_segments - next);

  CounterRng rng(seed, doc, kStreamRemap);
  const int64_t n_slots = target - total + n_blocks - 1;
  sample_subset(rng, n_slots, n_blocks - 1, bits);

  block_position[0] = 0;
  block_token[1] = first_len;
  int64_t block = 1;
  const int64_t words = bitmap_words(n_slots);
  for (int64_t w = 0; w < words; ++w) {
    uint64_t word = bits[w];
    while (word) {
      const int64_t slot = w * 64 + count_trailing_zeros64(word) + 1;
      word &= word - 1;
      int64_t len;
      if (tail > 0) {
        len = tail;
        tail = 0;
      } else {
        len = lengths[next++];
      }
      // Slots before this block hold `block` blocks and (slot - block) skipped positions.
      block_position[block] = block_token[block] + slot - block;
      block_token[block + 1] = block_token[block] + len;
      ++block;
    }
  }
  return n_blocks;
}

// Positions of block b: contiguous from its first position.
LR_HD void write_block(const int64_t* block_token, const int64_t* block_position, int64_t b, int64_t* out) {
  for (int64_t t = block_token[b]; t < block_token[b + 1]; ++t) out[t] = block_position[b] + (t - block_token[b]);
}

// Where document d's layout lives in batch-wide scratch arrays (block_token: S + 2 * n_docs entries,
// block_position: S + n_docs, S = all segments): shared by the CPU loop and the CUDA kernels.
LR_HD int64_t block_token_offset(const int64_t* seg_offsets, int64_t d) { return seg_offsets[d] + 2 * d; }
LR_HD int64_t block_position_offset(const int64_t* seg_offsets, int64_t d) { return seg_offsets[d] + d; }

// remap_layout + write_block for every block: out receives the document's L positions.
LR_HD void remap_document(const int64_t* lengths, int64_t n_segments, int64_t target, int64_t keep_prefix,
                          uint64_t seed, uint64_t doc, uint64_t* bits, int64_t* block_token,
                          int64_t* block_position, int64_t* out) {
  const int64_t n_blocks =
      remap_layout(lengths, n_segments, target, keep_prefix, seed, doc, bits, block_token, block_position);
  for (int64_t b = 0; b < n_blocks; ++b) write_block(block_token, block_position, b, out);
}

// PoSE (Zhu et al., 2024) with two chunks: the first l1 ~ U[1, (L+1)//2] tokens keep 0..l1-1, the rest
// is shifted by skip ~ U[0, target - L].
LR_HD void pose_params(int64_t length, int64_t target, uint64_t seed, uint64_t doc, int64_t* split,
                       int64_t* skip) {
  CounterRng rng(seed, doc, kStreamPose);
  *split = 1 + (int64_t)rng.bounded((uint64_t)((length + 1) / 2));
  *skip = (int64_t)rng.bounded((uint64_t)(target - length + 1));
}

LR_HD int64_t pose_position(int64_t t, int64_t split, int64_t skip) { return t < split ? t : t + skip; }

LR_HD void pose_document(int64_t length, int64_t target, uint64_t seed, uint64_t doc, int64_t* out) {
  if (length == 0) return;
  int64_t split, skip;
  pose_params(length, target, seed, doc, &split, &skip);
  for (int64_t t = 0; t < length; ++t) out[t] = pose_position(t, split, skip);
}

// Randomized positional encodings (Ruoss et al., 2023): a sorted uniform L-subset of [0, target).
// Position 0 is not forced (the method samples the whole subset). bits: bitmap_words(target) words.
LR_HD void randpos_document(int64_t length, int64_t target, uint64_t seed, uint64_t doc, uint64_t* bits,
                            int64_t* out) {
  if (length == 0) return;
  CounterRng rng(seed, doc, kStreamRandpos);
  sample_subset(rng, target, length, bits);
  int64_t i = 0;
  const int64_t words = bitmap_words(target);
  for (int64_t w = 0; w < words; ++w) {
    uint64_t word = bits[w];
    while (word) {
      out[i++] = w * 64 + count_trailing_zeros64(word);
      word &= word - 1;
    }
  }
}

}  // namespace lr
