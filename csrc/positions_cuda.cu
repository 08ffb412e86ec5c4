// CUDA kernels of the data ops: raw pointers only (no torch headers), so `nvcc -c` builds this file alone.
// The logic is lr_positions.h, the same functions the CPU loops call: results agree bit for bit.
#include <cuda_runtime.h>

#include "lr_positions.h"
#include "positions_launch.h"

namespace lr {
namespace {

constexpr int kThreads = 128;

// cudaGetLastError right after a launch reports a launch that never started (bad configuration, no kernel
// image for this GPU, a sticky error from earlier work). Return it at once, before a later launch reads
// scratch the failed one should have written; the binding turns it into a Python error (C10_CUDA_CHECK).
#define LR_LAUNCH_CHECK()                                            \
  do {                                                               \
    const cudaError_t lr_launch_status = cudaGetLastError();         \
    if (lr_launch_status != cudaSuccess) return (int)lr_launch_status; \
  } while (0)

inline unsigned int blocks_for(int64_t n) { return (unsigned int)((n + kThreads - 1) / kThreads); }

__global__ void split_flags_kernel(const int64_t* __restrict__ ids, int64_t n_tokens,
                                   const bool* __restrict__ delimiter_mask, uint8_t* __restrict__ starts_flag) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n_tokens) starts_flag[i] = starts_segment(ids, delimiter_mask, i) ? 1 : 0;
}

__global__ void keep_segments_kernel(const int64_t* __restrict__ ids, const int64_t* __restrict__ starts,
                                     int64_t n_segments, const bool* __restrict__ impactful_mask,
                                     uint64_t drop_threshold53, uint64_t seed, uint64_t doc,
                                     uint8_t* __restrict__ keep) {
  const int64_t s = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (s < n_segments) {
    keep[s] = keep_segment(ids, starts[s], starts[s + 1], impactful_mask, drop_threshold53, seed, doc, s) ? 1 : 0;
  }
}

// Remap in two phases. Phase 1, one thread per document: the slot sampling is sequential by nature
// (Floyd), so each thread draws its document's block layout (O(segments + target/64) work) into global
// scratch. Phase 2, one thread block per document: threads take blocks (sentences) in turn and write their
// positions, so the O(tokens) stores are spread over a whole thread block.
__global__ void remap_layout_kernel(const int64_t* __restrict__ lengths, const int64_t* __restrict__ seg_offsets,
                                    int64_t n_docs, int64_t target, int64_t keep_prefix, uint64_t seed,
                                    uint64_t first_doc, uint64_t* __restrict__ bits, int64_t* __restrict__ block_token,
                                    int64_t* __restrict__ block_position, int64_t* __restrict__ n_blocks) {
  const int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= n_docs) return;
  const int64_t first = seg_offsets[d];
  n_blocks[d] = remap_layout(lengths + first, seg_offsets[d + 1] - first, target, keep_prefix, seed,
                             first_doc + (uint64_t)d, bits + d * bitmap_words(target),
                             block_token + block_token_offset(seg_offsets, d),
                             block_position + block_position_offset(seg_offsets, d));
}

__global__ void remap_write_kernel(const int64_t* __restrict__ seg_offsets, const int64_t* __restrict__ tok_offsets,
                                   const int64_t* __restrict__ block_token, const int64_t* __restrict__ block_position,
                                   const int64_t* __restrict__ n_blocks, int64_t* __restrict__ out) {
  const int64_t d = blockIdx.x;
  const int64_t* doc_token = block_token + block_token_offset(seg_offsets, d);
  const int64_t* doc_position = block_position + block_position_offset(seg_offsets, d);
  int64_t* doc_out = out + tok_offsets[d];
  for (int64_t b = threadIdx.x; b < n_blocks[d]; b += blockDim.x) write_block(doc_token, doc_position, b, doc_out);
}

// PoSE positions are closed-form per token once (split, skip) are drawn: one block per document, each
// thread redraws the two numbers (one Philox block) instead of synchronising through shared memory.
__global__ void pose_positions_kernel(const int64_t* __restrict__ lengths, const int64_t* __restrict__ tok_offsets,
                                      int64_t target, uint64_t seed, uint64_t first_doc,
                                      int64_t* __restrict__ out) {
  const int64_t d = blockIdx.x;
  const int64_t length = lengths[d];
  if (length == 0) return;
  int64_t split, skip;
  pose_params(length, target, seed, first_doc + (uint64_t)d, &split, &skip);
  int64_t* doc_out = out + tok_offsets[d];
  for (int64_t t = threadIdx.x; t < length; t += blockDim.x) doc_out[t] = pose_position(t, split, skip);
}

__global__ void randpos_positions_kernel(const int64_t* __restrict__ lengths, const int64_t* __restrict__ tok_offsets,
                                         int64_t n_docs, int64_t target, uint64_t seed, uint64_t first_doc,
                                         uint64_t* __restrict__ scratch, int64_t* __restrict__ out) {
  const int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= n_docs) return;
  randpos_document(lengths[d], target, seed, first_doc + (uint64_t)d, scratch + d * bitmap_words(target),
                   out + tok_offsets[d]);
}

}  // namespace

int split_flags_cuda(const int64_t* ids, int64_t n_tokens, const bool* delimiter_mask, uint8_t* starts_flag,
                     void* stream) {
  if (n_tokens == 0) return 0;
  split_flags_kernel<<<blocks_for(n_tokens), kThreads, 0, (cudaStream_t)stream>>>(ids, n_tokens, delimiter_mask,
                                                                                   starts_flag);
  LR_LAUNCH_CHECK();
  return 0;
}

int keep_segments_cuda(const int64_t* ids, const int64_t* starts, int64_t n_segments, const bool* impactful_mask,
                       uint64_t drop_threshold53, uint64_t seed, uint64_t doc, uint8_t* keep, void* stream) {
  if (n_segments == 0) return 0;
  keep_segments_kernel<<<blocks_for(n_segments), kThreads, 0, (cudaStream_t)stream>>>(
      ids, starts, n_segments, impactful_mask, drop_threshold53, seed, doc, keep);
  LR_LAUNCH_CHECK();
  return 0;
}

int remap_positions_cuda(const int64_t* lengths, const int64_t* seg_offsets, const int64_t* tok_offsets,
                         int64_t n_docs, int64_t target, int64_t keep_prefix, uint64_t seed, uint64_t first_doc,
                         uint64_t* bits, int64_t* block_token, int64_t* block_position, int64_t* n_blocks,
                         int64_t* out, void* stream) {
  if (n_docs == 0) return 0;
  remap_layout_kernel<<<blocks_for(n_docs), kThreads, 0, (cudaStream_t)stream>>>(
      lengths, seg_offsets, n_docs, target, keep_prefix, seed, first_doc, bits, block_token, block_position, n_blocks);
  LR_LAUNCH_CHECK();
  remap_write_kernel<<<(unsigned int)n_docs, kThreads, 0, (cudaStream_t)stream>>>(
      seg_offsets, tok_offsets, block_token, block_position, n_blocks, out);
  LR_LAUNCH_CHECK();
  return 0;
}

int pose_positions_cuda(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                        uint64_t seed, uint64_t first_doc, int64_t* out, void* stream) {
  if (n_docs == 0) return 0;
  pose_positions_kernel<<<(unsigned int)n_docs, 256, 0, (cudaStream_t)stream>>>(lengths, tok_offsets, target, seed,
                                                                                  first_doc, out);
  LR_LAUNCH_CHECK();
  return 0;
}

int randpos_positions_cuda(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                           uint64_t seed, uint64_t first_doc, uint64_t* scratch, int64_t* out, void* stream) {
  if (n_docs == 0) return 0;
  randpos_positions_kernel<<<blocks_for(n_docs), kThreads, 0, (cudaStream_t)stream>>>(
      lengths, tok_offsets, n_docs, target, seed, first_doc, scratch, out);
  LR_LAUNCH_CHECK();
  return 0;
}

}  // namespace lr
