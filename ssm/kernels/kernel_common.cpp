// Argument checks and layout helpers of the SSM ops (see kernel_common.h).
#include "ssm/kernels/kernel_common.h"

#include "core/error.h"

namespace ssmtrain::ssm_detail {

namespace {
// "Bm (2, 16, 3, 8) f32 cpu" (the tensor's own name is added when it has one).
std::string describe_arg(const char* arg, const Tensor& t) {
  std::string s = arg;
  if (!t.name().empty()) s += " '" + t.name() + "'";
  return s + " " + t.shape().str() + " " + dtype_name(t.dtype()) + " " + t.device().str();
}
}  // namespace

void check_present(const char* op, const char* arg, const Tensor& t) {
  SSMT_CHECK(t.defined(), op, ": ", arg, " is an undefined tensor (it is required)");
}

void check_rank(const char* op, const char* arg, const Tensor& t, int rank, const char* names) {
  SSMT_CHECK(t.dim() == rank, op, ": ", describe_arg(arg, t), ": expected ", rank, " dimensions ", names);
}

void check_shape(const char* op, const char* arg, const Tensor& t, const Dims& expected, const char* names) {
  check_rank(op, arg, t, expected.size(), names);
  SSMT_CHECK(t.shape() == expected, op, ": ", describe_arg(arg, t), ": expected ", names, " = ", expected.str());
}

void check_device(const char* op, const char* arg, const Tensor& t, Device device, const char* ref) {
  SSMT_CHECK(t.device() == device, op, ": ", describe_arg(arg, t), ": expected device ", device.str(), " (the device of ",
             ref, ")");
}

void check_dtype(const char* op, const char* arg, const Tensor& t, DType dtype, const char* ref) {
  SSMT_CHECK(t.dtype() == dtype, op, ": ", describe_arg(arg, t), ": expected dtype ", dtype_name(dtype),
             " (the dtype of ", ref, ")");
}

void check_floating_arg(const char* op, const char* arg, const Tensor& t) {
  SSMT_CHECK(is_floating(t.dtype()), op, ": ", describe_arg(arg, t), ": expected a floating dtype (f32, bf16, f64)");
}

void check_operands(const char* op, const Tensor& ref, const char* ref_name, std::initializer_list<NamedArg> args) {
  for (const NamedArg& a : args) {
    if (!a.t.defined()) continue;
    check_device(op, a.name, a.t, ref.device(), ref_name);
    check_floating_arg(op, a.name, a.t);
  }
}

void check_same_dtype(const char* op, const Tensor& ref, const char* ref_name, std::initializer_list<NamedArg> args) {
  for (const NamedArg& a : args)
    if (a.t.defined()) check_dtype(op, a.name, a.t, ref.dtype(), ref_name);
}

Tensor checked_seq_idx(const char* op, const Tensor& seq_idx, int64_t B, int64_t L, Device device, const char* ref) {
  if (!seq_idx.defined()) return seq_idx;
  check_shape(op, "seq_idx", seq_idx, {B, L}, "(B, L)");
  SSMT_CHECK(seq_idx.dtype() == DType::i32, op, ": ", describe_arg("seq_idx", seq_idx),
             ": expected dtype i32 (the document index of every position)");
  check_device(op, "seq_idx", seq_idx, device, ref);
  Tensor s = seq_idx.contiguous();
  if (device.is_cpu()) {
    const int32_t* v = static_cast<const int32_t*>(s.data_ptr());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 1; t < L; ++t)
        SSMT_CHECK(v[b * L + t] >= v[b * L + t - 1], op, ": ", describe_arg("seq_idx", seq_idx), ": row ", b,
                   " decreases at position ", t, " (", v[b * L + t - 1], " then ", v[b * L + t],
                   "); document indices must be non-decreasing along L");
  }
  return s;
}

Tensor with_contiguous_rows(const Tensor& t, int inner_dims) {
  int64_t expect = 1;
  for (int i = t.dim() - 1; i >= t.dim() - inner_dims; --i) {
    if (t.size(i) != 1 && t.strides()[i] != expect) return t.contiguous();
    expect *= t.size(i);
  }
  return t;
}

SeqView seq_view(const Tensor& t) {
  SSMT_ASSERT(t.dim() >= 2, "seq_view of ", t.describe());
  return SeqView{t.data_ptr(), t.strides()[0], t.strides()[1]};
}

}  // namespace ssmtrain::ssm_detail
