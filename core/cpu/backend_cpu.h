// The CPU backend: the reference implementation of core/backend.h, which the tests and the
// CUDA comparisons trust. Loops are OpenMP-parallel above a size threshold and written so
// that results never depend on the thread count (fixed chunking, no atomics); products go
// through Eigen.
//
// The methods are defined by family, one file each: copy.cpp (copy, fill, arange),
// random.cpp, elementwise.cpp, reduce.cpp (row reductions, cumsum, softmax), gemm.cpp,
// loss.cpp (cross-entropy), norm.cpp (RMSNorm, LayerNorm), indexing.cpp.
//
// Dtypes beyond what backend.h states (the ops layer allocates accordingly):
//  - statistics and per-row losses (rstd, mean, loss, lse, gloss) and the parameter
//    gradients gw, gb are f64 for f64 inputs and f32 otherwise, so f64 gradient checks keep
//    full double precision; the kernels accept either float dtype there;
//  - norm weights and biases may be in x's dtype or in that statistics dtype;
//  - copy converts between all five dtypes (floats to integers truncate toward zero);
//    fill, arange, the random fills, binary, where, reduce_rows, cumsum_rows and the
//    indexing kernels accept every dtype; the remaining kernels are float-only.
#pragma once

#include "core/backend.h"

namespace ssmtrain::cpu {

class CpuBackend final : public Backend {
 public:
  void copy(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;
  void arange(const Tensor& dst, double start, double step) override;
  void fill_uniform(const Tensor& dst, uint64_t seed, uint64_t offset, double low, double high) override;
  void fill_normal(const Tensor& dst, uint64_t seed, uint64_t offset, double mean, double std) override;
  void fill_randint(const Tensor& dst, uint64_t seed, uint64_t offset, int64_t low, int64_t high) override;

  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) override;
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& gy, const Tensor& gx, double p0,
                      double p1) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;

  void reduce_rows(ReduceOp op, const Tensor& x, const Tensor& out) override;
  void logsumexp_rows(const Tensor& x, const Tensor& out) override;
  void cumsum_rows(const Tensor& x, const Tensor& out, bool reverse) override;
  void softmax_rows(const Tensor& x, const Tensor& y, bool log) override;
  void softmax_rows_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, bool log) override;

  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& out, double alpha,
            double beta) override;

  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index, const Tensor& loss,
                             const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& gloss,
                              int64_t ignore_index, const Tensor& dlogits) override;
  void cross_entropy_with_grad(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                               const Tensor& scale, const Tensor& loss, const Tensor& lse,
                               const Tensor& dlogits) override;
  void rms_norm_forward(const Tensor& x, const Tensor& w, double eps, const Tensor& y, const Tensor& rstd) override;
  void rms_norm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& gy, const Tensor& gx,
                         const Tensor& gw) override;
  void add_rms_norm_forward(const Tensor& h, const Tensor& y, const Tensor& w, double eps, const Tensor& s,
                            const Tensor& n, const Tensor& rstd) override;
  void add_rms_norm_backward(const Tensor& s, const Tensor& w, const Tensor& rstd, const Tensor& gn, const Tensor& gs,
                             const Tensor& gh, const Tensor& gy, const Tensor& gw) override;
  void layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& y,
                          const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                           const Tensor& gy, const Tensor& gx, const Tensor& gw, const Tensor& gb) override;

  void index_select_rows(const Tensor& x, const Tensor& idx, const Tensor& out) override;
  void index_add_rows(const Tensor& g, const Tensor& idx, const Tensor& out) override;
  void gather_last(const Tensor& x, const Tensor& idx, const Tensor& out) override;
  void scatter_add_last(const Tensor& g, const Tensor& idx, const Tensor& out) override;

  void synchronize() override {}
};

}  // namespace ssmtrain::cpu
