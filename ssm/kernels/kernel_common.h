// Pieces shared by the SSM ops of ssm/kernels/ (selective scan, SSD, causal conv, linear
// scan): the strided view of a (B, L, ...) sequence tensor that the params structs carry,
// and the argument checks whose messages name the op, the tensor and the expected shape, e.g.
//   "selective_scan: Bm (2, 16, 3, 8) f32 cpu: expected (B, L, G, N) = (2, 16, 1, 8)".
//
// Dtype convention of every op here: sequence tensors (activations) are f32, bf16 or f64 and
// share one dtype; parameters and recurrent states are in the compute dtype (f64 for f64
// inputs, f32 otherwise), so bf16 activations are scanned in fp32.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/math.h"
#include "core/tensor.h"

namespace ssmtrain {

// A (B, L, ...) tensor as a kernel sees it: element i of the contiguous trailing block at
// (b, t) lives at data[b * batch_stride + t * seq_stride + i]. Batch and time may be strided
// (a slice of a wider projection output needs no copy); the trailing axes are contiguous.
struct SeqView {
  void* data = nullptr;
  int64_t batch_stride = 0;
  int64_t seq_stride = 0;
};

// The scalar math of these kernels is core/math.h (sigmoid, softplus, silu and their
// derivatives; exp_vec and the branch-free sigmoid for the CPU loops).

namespace ssm_detail {

// f64 for f64, f32 for f32 and bf16: the dtype of parameters, states and accumulators.
inline DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// The argument checks. `names` spells the expected axes, e.g. "(B, L, D)".
void check_present(const char* op, const char* arg, const Tensor& t);
void check_rank(const char* op, const char* arg, const Tensor& t, int rank, const char* names);
void check_shape(const char* op, const char* arg, const Tensor& t, const Dims& expected, const char* names);
// t on `device`, naming `ref` (the tensor that fixed the device).
void check_device(const char* op, const char* arg, const Tensor& t, Device device, const char* ref);
// t of dtype `dtype`, naming `ref` (the tensor that fixed the dtype).
void check_dtype(const char* op, const char* arg, const Tensor& t, DType dtype, const char* ref);
void check_floating_arg(const char* op, const char* arg, const Tensor& t);

// An argument by name, for the checks over several at once (undefined: absent, skipped).
struct NamedArg {
  const char* name;
  const Tensor& t;
};
// Each defined one of `args` on ref's device (naming `ref_name`) and floating-point.
void check_operands(const char* op, const Tensor& ref, const char* ref_name, std::initializer_list<NamedArg> args);
// Each defined one of `args` of ref's dtype (the sequence tensors of an op share one).
void check_same_dtype(const char* op, const Tensor& ref, const char* ref_name, std::initializer_list<NamedArg> args);

// The packed-documents argument of the scans and the conv (SPECS section 12): undefined, or
// an i32 (B, L) tensor on `device` (the device of the op's tensor `ref`). Returns it
// contiguous (or undefined). On the CPU it also checks that every row is non-decreasing (the
// CUDA kernels trust it: a reset is wherever seq_idx[b, t] != seq_idx[b, t-1], and positions
// of one document are compared by equality).
Tensor checked_seq_idx(const char* op, const Tensor& seq_idx, int64_t B, int64_t L, Device device,
                       const char* ref = "x");

// t itself when its last `inner_dims` axes are contiguous (any strides for the others),
// else a contiguous copy (recorded on the tape like any copy).
Tensor with_contiguous_rows(const Tensor& t, int inner_dims);
// The SeqView of a (B, L, ...) tensor whose trailing axes are contiguous.
SeqView seq_view(const Tensor& t);

}  // namespace ssm_detail

// dst[i] = sum over b < batches of part[b * width + i], summed in batch order (the CPU
// kernels' deterministic reduction of per-batch gradient partials); no-op for a null dst.
template <typename Acc>
void sum_batch_partials(const std::vector<Acc>& part, int64_t batches, int64_t width, void* dst_raw) {
  if (!dst_raw) return;
  Acc* dst = static_cast<Acc*>(dst_raw);
  for (int64_t i = 0; i < width; ++i) {
    Acc acc = 0;
    for (int64_t b = 0; b < batches; ++b) acc += part[b * width + i];
    dst[i] = acc;
  }
}

}  // namespace ssmtrain
