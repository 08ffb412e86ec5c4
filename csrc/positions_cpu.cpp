// CPU loops of the data ops: OpenMP over documents (or over segments for one long document). Torch-free so
// that tests can compile it with a plain C++ driver and this translation unit builds in a second.
#include <cstddef>
#include <vector>

#include "lr_positions.h"
#include "positions_launch.h"

namespace lr {

int64_t split_segments_cpu(const int64_t* ids, int64_t n_tokens, const bool* delimiter_mask, int64_t* starts) {
  int64_t count = 0;
  for (int64_t i = 0; i < n_tokens; ++i) {
    if (starts_segment(ids, delimiter_mask, i)) starts[count++] = i;
  }
  starts[count++] = n_tokens;
  return count;
}

void keep_segments_cpu(const int64_t* ids, const int64_t* starts, int64_t n_segments, const bool* impactful_mask,
                       uint64_t drop_threshold53, uint64_t seed, uint64_t doc, uint8_t* keep, int num_threads) {
  // Threads only pay off for very long documents; each decision is independent of the others.
  const bool parallel = num_threads > 1 && n_segments > 4096;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (parallel)
  for (int64_t s = 0; s < n_segments; ++s) {
    keep[s] = keep_segment(ids, starts[s], starts[s + 1], impactful_mask, drop_threshold53, seed, doc, s) ? 1 : 0;
  }
}

void remap_positions_cpu(const int64_t* lengths, const int64_t* seg_offsets, const int64_t* tok_offsets,
                         int64_t n_docs, int64_t target, int64_t keep_prefix, uint64_t seed, uint64_t first_doc,
                         int64_t* out, int num_threads) {
  // The batch-wide layout arrays of the CUDA path, so both index them through the same header helpers.
  std::vector<int64_t> block_token((std::size_t)(seg_offsets[n_docs] + 2 * n_docs));
  std::vector<int64_t> block_position((std::size_t)(seg_offsets[n_docs] + n_docs));
#pragma omp parallel num_threads(num_threads) if (n_docs > 1)
  {
    std::vector<uint64_t> bits((std::size_t)bitmap_words(target));
#pragma omp for schedule(dynamic, 1)
    for (int64_t d = 0; d < n_docs; ++d) {
      remap_document(lengths + seg_offsets[d], seg_offsets[d + 1] - seg_offsets[d], target, keep_prefix, seed,
                     first_doc + (uint64_t)d, bits.data(), block_token.data() + block_token_offset(seg_offsets, d),
                     block_position.data() + block_position_offset(seg_offsets, d), out + tok_offsets[d]);
    }
  }
}

void pose_positions_cpu(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                        uint64_t seed, uint64_t first_doc, int64_t* out, int num_threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (n_docs > 1)
  for (int64_t d = 0; d < n_docs; ++d) {
    pose_document(lengths[d], target, seed, first_doc + (uint64_t)d, out + tok_offsets[d]);
  }
}

void randpos_positions_cpu(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                           uint64_t seed, uint64_t first_doc, int64_t* out, int num_threads) {
#pragma omp parallel num_threads(num_threads) if (n_docs > 1)
  {
    std::vector<uint64_t> bits((std::size_t)bitmap_words(target));
#pragma omp for schedule(dynamic, 1)
    for (int64_t d = 0; d < n_docs; ++d) {
      randpos_document(lengths[d], target, seed, first_doc + (uint64_t)d, bits.data(), out + tok_offsets[d]);
    }
  }
}

}  // namespace lr
