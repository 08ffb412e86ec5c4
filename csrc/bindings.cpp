// TORCH_LIBRARY registration of the data ops (namespace lr_kernels) with CPU and, when built with CUDA,
// CUDA kernels. Shapes, dtypes and value ranges are checked by the Python wrappers in
// lr_kernels/positions; the TORCH_CHECKs here only guard against memory errors when the ops are called
// directly through torch.ops.
//
// Every CUDA branch sets a CUDAGuard on its input's device before launching (a launch goes to the current
// device, which need not be the tensors' one), launches on that device's current stream, and checks each
// launch's status (check_launch: C10_CUDA_CHECK of the cudaError_t the launcher returns).
#include <Python.h>

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "lr_positions.h"
#include "positions_launch.h"

#ifdef LR_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

// Below ~2M tokens a batch takes a few ms on one core, and an OpenMP fork/join on a loaded machine can
// cost more than it saves (a descheduled worker stalls the barrier), so small batches stay on one thread.
constexpr int64_t kParallelMinWork = int64_t(1) << 21;

int threads_for(int64_t work) { return work >= kParallelMinWork ? at::get_num_threads() : 1; }

// Argument checks raise ValueError in Python (TORCH_CHECK_VALUE) and name the argument. They run as plain
// loops on the host: a parallel torch reduction would cost more than the op itself on a busy machine.
void check_index_range(const at::Tensor& ids, int64_t vocab, const char* name, const char* mask_name) {
  if (ids.numel() == 0) return;
  int64_t lo, hi;
  if (ids.is_cuda()) {
    const auto mm = at::aminmax(ids);
    lo = std::get<0>(mm).item<int64_t>();
    hi = std::get<1>(mm).item<int64_t>();
  } else {
    const int64_t* p = ids.data_ptr<int64_t>();
    lo = hi = p[0];
    for (int64_t i = 1; i < ids.numel(); ++i) {
      lo = std::min(lo, p[i]);
      hi = std::max(hi, p[i]);
    }
  }
  TORCH_CHECK_VALUE(lo >= 0 && hi < vocab, name, " holds token ids outside [0, ", vocab, "): ", mask_name,
                    " has one entry per vocabulary id");
}

void check_1d(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.scalar_type() == dtype, name, " must be a 1-D ", c10::toString(dtype),
                    " tensor");
}

void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " must be on the device of ", like_name, " (", like.device(),
                    "), got ", t.device());
}

#ifdef LR_WITH_CUDA
// The launchers in positions_cuda.cu are CUDA-free in their interface: they return a cudaError_t as an int.
void check_launch(int status) { C10_CUDA_CHECK(static_cast<cudaError_t>(status)); }

// The current stream of t's device (not of whatever device happens to be current).
void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
#endif

uint64_t drop_threshold53(double drop_ratio) {
  TORCH_CHECK_VALUE(drop_ratio >= 0.0 && drop_ratio <= 1.0, "drop_ratio must lie in [0, 1], got ", drop_ratio);
  // Exact: scaling by a power of two; the truncation matches the Python reference's int().
  return (uint64_t)(drop_ratio * 9007199254740992.0);
}

at::Tensor split_segments(const at::Tensor& input_ids_, const at::Tensor& delimiter_mask_) {
  check_1d(input_ids_, at::kLong, "input_ids");
  check_1d(delimiter_mask_, at::kBool, "delimiter_mask");
  check_same_device(delimiter_mask_, input_ids_, "delimiter_mask", "input_ids");
  const auto ids = input_ids_.contiguous();
  const auto mask = delimiter_mask_.contiguous();
  check_index_range(ids, mask.numel(), "input_ids", "delimiter_mask");
  const int64_t n = ids.numel();
  if (ids.is_cuda()) {
#ifdef LR_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(ids.device());
    auto flags = at::empty({n}, ids.options().dtype(at::kByte));
    check_launch(lr::split_flags_cuda(ids.data_ptr<int64_t>(), n, mask.data_ptr<bool>(), flags.data_ptr<uint8_t>(),
                                      stream_of(ids)));
    auto starts = at::nonzero(flags).view({-1});
    return at::cat({starts, at::full({1}, n, starts.options())});
#else
    TORCH_CHECK(false, "lr_kernels._C was built without CUDA");
#endif
  }
  auto starts = at::empty({n + 1}, ids.options());
  const int64_t count = lr::split_segments_cpu(ids.data_ptr<int64_t>(), n, mask.data_ptr<bool>(),
                                               starts.data_ptr<int64_t>());
  return starts.narrow(0, 0, count).clone();
}

at::Tensor select_segments(const at::Tensor& input_ids_, const at::Tensor& segment_starts_,
                           const at::Tensor& impactful_mask_, double drop_ratio, int64_t seed,
                           int64_t document_index) {
  check_1d(input_ids_, at::kLong, "input_ids");
  check_1d(segment_starts_, at::kLong, "segment_starts");
  check_1d(impactful_mask_, at::kBool, "impactful_mask");
  check_same_device(segment_starts_, input_ids_, "segment_starts", "input_ids");
  check_same_device(impactful_mask_, input_ids_, "impactful_mask", "input_ids");
  const auto ids = input_ids_.contiguous();
  const auto starts = segment_starts_.contiguous();
  const auto mask = impactful_mask_.contiguous();
  check_index_range(ids, mask.numel(), "input_ids", "impactful_mask");
  const int64_t n_segments = starts.numel() - 1;
  TORCH_CHECK_VALUE(n_segments >= 0, "segment_starts must hold at least one entry (S+1 starts)");
  {
    const auto h_starts = starts.cpu();
    const int64_t* p = h_starts.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(p[0] == 0 && p[n_segments] == ids.numel(), "segment_starts must run from 0 to len(input_ids)=",
                      ids.numel());
    for (int64_t s = 0; s < n_segments; ++s) {
      TORCH_CHECK_VALUE(p[s] <= p[s + 1], "segment_starts must be non-decreasing");
    }
  }
  const uint64_t threshold = drop_threshold53(drop_ratio);
  auto keep = at::empty({n_segments}, ids.options().dtype(at::kByte));
  if (ids.is_cuda()) {
#ifdef LR_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(ids.device());
    check_launch(lr::keep_segments_cuda(ids.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), n_segments,
                                        mask.data_ptr<bool>(), threshold, (uint64_t)seed, (uint64_t)document_index,
                                        keep.data_ptr<uint8_t>(), stream_of(ids)));
    const auto lengths = starts.narrow(0, 1, n_segments) - starts.narrow(0, 0, n_segments);
    const auto token_keep = at::repeat_interleave(keep.to(at::kBool), lengths);
    return at::nonzero(token_keep).view({-1});
#else
    TORCH_CHECK(false, "lr_kernels._C was built without CUDA");
#endif
  }
  const int64_t* p_starts = starts.data_ptr<int64_t>();
  lr::keep_segments_cpu(ids.data_ptr<int64_t>(), p_starts, n_segments, mask.data_ptr<bool>(), threshold,
                        (uint64_t)seed, (uint64_t)document_index, keep.data_ptr<uint8_t>(),
                        threads_for(ids.numel()));
  const uint8_t* p_keep = keep.data_ptr<uint8_t>();
  int64_t n_kept = 0;
  for (int64_t s = 0; s < n_segments; ++s) n_kept += p_keep[s] ? p_starts[s + 1] - p_starts[s] : 0;
  auto kept = at::empty({n_kept}, ids.options());
  int64_t* p_kept = kept.data_ptr<int64_t>();
  for (int64_t s = 0; s < n_segments; ++s) {
    if (!p_keep[s]) continue;
    for (int64_t i = p_starts[s]; i < p_starts[s + 1]; ++i) *p_kept++ = i;
  }
  return kept;
}

// Token offset of every document plus the total, from per-document token counts (on the host).
at::Tensor token_offsets(const at::Tensor& doc_tokens) {
  auto offsets = at::zeros({doc_tokens.numel() + 1}, doc_tokens.options());
  if (doc_tokens.numel() > 0) offsets.narrow(0, 1, doc_tokens.numel()).copy_(at::cumsum(doc_tokens, 0));
  return offsets;
}

at::Tensor remap_positions(const at::Tensor& segment_lengths_, const at::Tensor& segment_offsets_,
                           int64_t target_length, int64_t seed, int64_t keep_prefix, int64_t first_document) {
  check_1d(segment_lengths_, at::kLong, "segment_lengths");
  check_1d(segment_offsets_, at::kLong, "segment_offsets");
  check_same_device(segment_offsets_, segment_lengths_, "segment_offsets", "segment_lengths");
  TORCH_CHECK_VALUE(segment_offsets_.numel() >= 1, "segment_offsets must hold at least one entry (B+1 offsets)");
  TORCH_CHECK_VALUE(target_length >= 0, "target_length must be >= 0");
  TORCH_CHECK_VALUE(keep_prefix >= -1, "keep_prefix must be >= 0, or -1 for a random prefix");
  TORCH_CHECK_VALUE(first_document >= 0, "first_document must be >= 0");
  const auto lengths = segment_lengths_.contiguous();
  const auto seg_offsets = segment_offsets_.contiguous();
  const int64_t n_docs = seg_offsets.numel() - 1;
  // Validated on the host copy (a few kB), so a bad call fails here and never inside a kernel.
  const auto h_lengths = lengths.cpu();
  const auto h_seg = seg_offsets.cpu();
  const int64_t* pl = h_lengths.data_ptr<int64_t>();
  const int64_t* ps = h_seg.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(ps[0] == 0 && ps[n_docs] == lengths.numel(), "segment_offsets must run from 0 to len(segment_lengths)=",
                    lengths.numel());
  auto doc_tokens = at::empty({n_docs}, h_lengths.options());
  int64_t* pd = doc_tokens.data_ptr<int64_t>();
  for (int64_t d = 0; d < n_docs; ++d) {
    TORCH_CHECK_VALUE(ps[d] <= ps[d + 1], "segment_offsets must be non-decreasing");
    int64_t total = 0;
    for (int64_t s = ps[d]; s < ps[d + 1]; ++s) {
      TORCH_CHECK_VALUE(pl[s] >= 1, "segment_lengths must all be >= 1, got ", pl[s], " at index ", s);
      total += pl[s];
    }
    TORCH_CHECK_VALUE(total <= target_length, "document ", d, " has ", total, " tokens, more than target_length=",
                      target_length);
    pd[d] = total;
  }
  const auto h_tok = token_offsets(doc_tokens);
  const int64_t n_tokens = h_tok.data_ptr<int64_t>()[n_docs];
  auto out = at::empty({n_tokens}, lengths.options());
  if (lengths.is_cuda()) {
#ifdef LR_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(lengths.device());
    const auto tok = h_tok.to(lengths.device());
    const int64_t n_segments = lengths.numel();
    auto bits = at::empty({std::max<int64_t>(n_docs * lr::bitmap_words(target_length), 1)}, lengths.options());
    auto block_token = at::empty({n_segments + 2 * n_docs}, lengths.options());
    auto block_position = at::empty({n_segments + n_docs}, lengths.options());
    auto n_blocks = at::empty({n_docs}, lengths.options());
    check_launch(lr::remap_positions_cuda(
        lengths.data_ptr<int64_t>(), seg_offsets.data_ptr<int64_t>(), tok.data_ptr<int64_t>(), n_docs, target_length,
        keep_prefix, (uint64_t)seed, (uint64_t)first_document, reinterpret_cast<uint64_t*>(bits.data_ptr<int64_t>()),
        block_token.data_ptr<int64_t>(), block_position.data_ptr<int64_t>(), n_blocks.data_ptr<int64_t>(),
        out.data_ptr<int64_t>(), stream_of(lengths)));
    return out;
#else
    TORCH_CHECK(false, "lr_kernels._C was built without CUDA");
#endif
  }
  lr::remap_positions_cpu(pl, ps, h_tok.data_ptr<int64_t>(), n_docs, target_length, keep_prefix, (uint64_t)seed,
                          (uint64_t)first_document, out.data_ptr<int64_t>(),
                          threads_for(n_tokens + n_docs * lr::bitmap_words(target_length)));
  return out;
}

at::Tensor document_positions(const at::Tensor& lengths_, int64_t target_length, int64_t seed,
                              int64_t first_document, bool randpos) {
  check_1d(lengths_, at::kLong, "lengths");
  TORCH_CHECK_VALUE(target_length >= 0, "target_length must be >= 0");
  TORCH_CHECK_VALUE(first_document >= 0, "first_document must be >= 0");
  const auto lengths = lengths_.contiguous();
  const auto h_lengths = lengths.cpu();
  const int64_t n_docs = lengths.numel();
  const int64_t* pl = h_lengths.data_ptr<int64_t>();
  for (int64_t d = 0; d < n_docs; ++d) {
    TORCH_CHECK_VALUE(pl[d] >= 0 && pl[d] <= target_length, "length must lie in [0, target_length=", target_length,
                      "], got ", pl[d]);
  }
  const auto h_tok = token_offsets(h_lengths);
  auto out = at::empty({h_tok.data_ptr<int64_t>()[n_docs]}, lengths.options());
  if (lengths.is_cuda()) {
#ifdef LR_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(lengths.device());
    const auto tok = h_tok.to(lengths.device());
    if (randpos) {
      auto scratch = at::empty({std::max<int64_t>(n_docs * lr::bitmap_words(target_length), 1)}, lengths.options());
      check_launch(lr::randpos_positions_cuda(lengths.data_ptr<int64_t>(), tok.data_ptr<int64_t>(), n_docs,
                                              target_length, (uint64_t)seed, (uint64_t)first_document,
                                              reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>()),
                                              out.data_ptr<int64_t>(), stream_of(lengths)));
    } else {
      check_launch(lr::pose_positions_cuda(lengths.data_ptr<int64_t>(), tok.data_ptr<int64_t>(), n_docs,
                                           target_length, (uint64_t)seed, (uint64_t)first_document,
                                           out.data_ptr<int64_t>(), stream_of(lengths)));
    }
    return out;
#else
    TORCH_CHECK(false, "lr_kernels._C was built without CUDA");
#endif
  }
  const int threads = threads_for(out.numel() + (randpos ? n_docs * lr::bitmap_words(target_length) : 0));
  if (randpos) {
    lr::randpos_positions_cpu(pl, h_tok.data_ptr<int64_t>(), n_docs, target_length, (uint64_t)seed,
                              (uint64_t)first_document, out.data_ptr<int64_t>(), threads);
  } else {
    lr::pose_positions_cpu(pl, h_tok.data_ptr<int64_t>(), n_docs, target_length, (uint64_t)seed,
                           (uint64_t)first_document, out.data_ptr<int64_t>(), threads);
  }
  return out;
}

at::Tensor pose_positions(const at::Tensor& lengths, int64_t target_length, int64_t seed, int64_t first_document) {
  return document_positions(lengths, target_length, seed, first_document, false);
}

at::Tensor randpos_positions(const at::Tensor& lengths, int64_t target_length, int64_t seed,
                             int64_t first_document) {
  return document_positions(lengths, target_length, seed, first_document, true);
}

}  // namespace

TORCH_LIBRARY(lr_kernels, m) {
  m.def("split_segments(Tensor input_ids, Tensor delimiter_mask) -> Tensor");
  m.def(
      "select_segments(Tensor input_ids, Tensor segment_starts, Tensor impactful_mask, float drop_ratio, int seed, "
      "int document_index) -> Tensor");
  m.def(
      "remap_positions(Tensor segment_lengths, Tensor segment_offsets, int target_length, int seed, int keep_prefix, "
      "int first_document) -> Tensor");
  m.def("pose_positions(Tensor lengths, int target_length, int seed, int first_document) -> Tensor");
  m.def("randpos_positions(Tensor lengths, int target_length, int seed, int first_document) -> Tensor");
}

TORCH_LIBRARY_IMPL(lr_kernels, CPU, m) {
  m.impl("split_segments", &split_segments);
  m.impl("select_segments", &select_segments);
  m.impl("remap_positions", &remap_positions);
  m.impl("pose_positions", &pose_positions);
  m.impl("randpos_positions", &randpos_positions);
}

#ifdef LR_WITH_CUDA
TORCH_LIBRARY_IMPL(lr_kernels, CUDA, m) {
  m.impl("split_segments", &split_segments);
  m.impl("select_segments", &select_segments);
  m.impl("remap_positions", &remap_positions);
  m.impl("pose_positions", &pose_positions);
  m.impl("randpos_positions", &randpos_positions);
}
#endif

// A plain module: importing lr_kernels._C runs the static TORCH_LIBRARY registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "lr_kernels data ops (torch.ops.lr_kernels)", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
