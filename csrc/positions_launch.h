// Raw-pointer entry points of the data ops, one CPU and one CUDA version each. No torch here: bindings.cpp
// owns tensors, shapes and validation; these only loop (CPU) or launch (CUDA) the logic of lr_positions.h.
#pragma once

#include <stdint.h>

namespace lr {

// Writes the segment starts of one document (capacity n_tokens + 1) and returns how many it wrote (S + 1).
int64_t split_segments_cpu(const int64_t* ids, int64_t n_tokens, const bool* delimiter_mask, int64_t* starts);

// keep[s] = 1 for every kept segment of one document.
void keep_segments_cpu(const int64_t* ids, const int64_t* starts, int64_t n_segments, const bool* impactful_mask,
                       uint64_t drop_threshold53, uint64_t seed, uint64_t doc, uint8_t* keep, int num_threads);

// Batched over documents: document d owns segments seg_offsets[d]..seg_offsets[d+1] and writes its
// positions at out + tok_offsets[d]. Its RNG key is (seed, first_doc + d).
void remap_positions_cpu(const int64_t* lengths, const int64_t* seg_offsets, const int64_t* tok_offsets,
                         int64_t n_docs, int64_t target, int64_t keep_prefix, uint64_t seed, uint64_t first_doc,
                         int64_t* out, int num_threads);

// Batched over documents of lengths[d] tokens written at out + tok_offsets[d].
void pose_positions_cpu(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                        uint64_t seed, uint64_t first_doc, int64_t* out, int num_threads);
void randpos_positions_cpu(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                           uint64_t seed, uint64_t first_doc, int64_t* out, int num_threads);

// CUDA versions: same arguments, device pointers, asynchronous on `stream` (a cudaStream_t) of the current
// device, which the caller sets (bindings.cpp: a CUDAGuard on the inputs' device). Each returns 0, or the
// cudaError_t (as an int: this header stays free of CUDA headers) of the first launch that failed, after
// which it launches nothing more.
// split writes starts_flag[i] = 1 where token i starts a segment (the binding compacts them).
int split_flags_cuda(const int64_t* ids, int64_t n_tokens, const bool* delimiter_mask, uint8_t* starts_flag,
                     void* stream);
int keep_segments_cuda(const int64_t* ids, const int64_t* starts, int64_t n_segments, const bool* impactful_mask,
                       uint64_t drop_threshold53, uint64_t seed, uint64_t doc, uint8_t* keep, void* stream);
// Device scratch: bits n_docs * bitmap_words(target) words; block_token S + 2 * n_docs, block_position and
// n_blocks S + n_docs and n_docs entries (S = number of segments).
int remap_positions_cuda(const int64_t* lengths, const int64_t* seg_offsets, const int64_t* tok_offsets,
                         int64_t n_docs, int64_t target, int64_t keep_prefix, uint64_t seed, uint64_t first_doc,
                         uint64_t* bits, int64_t* block_token, int64_t* block_position, int64_t* n_blocks,
                         int64_t* out, void* stream);
int pose_positions_cuda(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                        uint64_t seed, uint64_t first_doc, int64_t* out, void* stream);
// scratch: n_docs * bitmap_words(target) words of device memory.
int randpos_positions_cuda(const int64_t* lengths, const int64_t* tok_offsets, int64_t n_docs, int64_t target,
                           uint64_t seed, uint64_t first_doc, uint64_t* scratch, int64_t* out, void* stream);

}  // namespace lr
