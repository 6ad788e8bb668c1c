// Device dispatch, names of enum values, and the small global settings of core/.
#include "core/backend.h"

#include <atomic>

namespace ssmtrain {

namespace {
std::atomic<bool> g_allow_tf32{false};
}

bool allow_tf32() { return g_allow_tf32.load(); }
void set_allow_tf32(bool on) { g_allow_tf32.store(on); }

Backend& backend(Device device) {
  if (device.is_cpu()) return cpu::cpu_backend();
#if defined(SSMTRAIN_WITH_CUDA)
  int n = cuda::device_count();
  SSMT_CHECK(n > 0, "device ", device.str(), ": no CUDA GPU is visible (CUDA_VISIBLE_DEVICES? driver?)");
  SSMT_CHECK(device.index >= 0 && device.index < n, "device ", device.str(), ": only ", n, " CUDA device(s) visible");
  return cuda::cuda_backend(device.index);
#else
  throw UserError("device " + device.str() + ": ssmtrain was built without CUDA (configure with -DSSMTRAIN_CUDA=ON)");
#endif
}

bool gemm_prologue(Backend& be, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& out,
                   double beta) {
  SSMT_ASSERT(a.dim() == 3 && b.dim() == 3 && out.dim() == 3 && out.is_contiguous(), "gemm: ", a.describe(), ", ",
              b.describe(), " -> ", out.describe());
  SSMT_ASSERT(a.dtype() == b.dtype() &&
                  (a.dtype() == out.dtype() || (a.dtype() == DType::bf16 && out.dtype() == DType::f32)),
              "gemm: dtypes of ", a.describe(), ", ", b.describe(), " -> ", out.describe());
  const int64_t batches = out.size(0), m = out.size(1), n = out.size(2);
  const int64_t k = trans_a ? a.size(1) : a.size(2);
  SSMT_ASSERT((a.size(0) == batches || a.size(0) == 1) && (b.size(0) == batches || b.size(0) == 1) &&
                  (trans_a ? a.size(2) : a.size(1)) == m && (trans_b ? b.size(2) : b.size(1)) == k &&
                  (trans_b ? b.size(1) : b.size(2)) == n,
              "gemm: shapes of ", a.describe(), (trans_a ? "^T" : ""), " @ ", b.describe(), (trans_b ? "^T" : ""),
              " -> ", out.describe());
  if (out.numel() == 0) return false;
  if (k == 0) {  // empty sum: out = beta * out
    if (beta == 0)
      be.fill(out, 0);
    else if (beta != 1)
      be.unary(UnaryOp::mul_scalar, out, out, beta, 0);
    return false;
  }
  return true;
}

void add_rms_norm_forward_composed(Backend& be, const Tensor& h, const Tensor& y, const Tensor& w, double eps,
                                   const Tensor& s, const Tensor& n, const Tensor& rstd) {
  SSMT_ASSERT(s.dtype() == h.dtype() && s.shape() == h.shape(), "add_rms_norm_forward: ", h.describe(), " -> ",
              s.describe());
  if (y.defined()) {
    Tensor y_up = y;
    if (y.dtype() != h.dtype()) {
      y_up = Tensor::empty(y.shape(), h.dtype(), h.device());
      be.copy(y, y_up);
    }
    be.binary(BinaryOp::add, h, y_up, s);
  } else {
    be.copy(h, s);
  }
  if (n.dtype() == s.dtype()) {
    be.rms_norm_forward(s, w, eps, n, rstd);
  } else {
    Tensor n_wide = Tensor::empty(s.shape(), s.dtype(), s.device());
    be.rms_norm_forward(s, w, eps, n_wide, rstd);
    be.copy(n_wide, n);
  }
}

void add_rms_norm_backward_composed(Backend& be, const Tensor& s, const Tensor& w, const Tensor& rstd,
                                    const Tensor& gn, const Tensor& gs, const Tensor& gh, const Tensor& gy,
                                    const Tensor& gw) {
  Tensor gn_wide = gn;
  if (gn.dtype() != s.dtype()) {
    gn_wide = Tensor::empty(gn.shape(), s.dtype(), s.device());
    be.copy(gn, gn_wide);
  }
  Tensor gx = Tensor::empty(s.shape(), s.dtype(), s.device());
  be.rms_norm_backward(s, w, rstd, gn_wide, gx, gw);
  Tensor total = gx;
  if (gs.defined()) {
    total = gh.defined() ? gh : Tensor::empty(s.shape(), s.dtype(), s.device());
    be.binary(BinaryOp::add, gx, gs, total);
  } else if (gh.defined()) {
    be.copy(gx, gh);
  }
  if (gy.defined()) be.copy(total, gy);
}

bool cuda_available() {
#if defined(SSMTRAIN_WITH_CUDA)
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64})
    if (name == dtype_name(t)) return t;
  throw UserError("unknown dtype '" + name + "' (expected f32, bf16, f64, i32 or i64)");
}

Device Device::parse(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.find_first_not_of("0123456789", 5) == std::string::npos)
    return Device::cuda(std::stoi(s.substr(5)));
  throw UserError("unknown device '" + s + "' (expected cpu, cuda or cuda:N)");
}

const char* unary_op_name(UnaryOp op) {
  static const char* names[] = {"neg",        "exp",        "log",         "log1p",       "sqrt",
                                "rsqrt",      "square",     "abs",         "sigmoid",     "softplus",
                                "silu",       "gelu",       "tanh",        "relu",        "add_scalar",
                                "mul_scalar", "rsub_scalar", "rdiv_scalar", "pow_scalar", "clamp",
                                "sin"};
  return names[static_cast<int>(op)];
}

const char* binary_op_name(BinaryOp op) {
  static const char* names[] = {"add", "sub", "mul", "div", "maximum", "minimum",
                                "eq",  "ne",  "lt",  "le",  "gt",      "ge"};
  return names[static_cast<int>(op)];
}

}  // namespace ssmtrain
