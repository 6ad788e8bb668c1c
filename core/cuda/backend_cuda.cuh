// The CUDA implementation of Backend (core/backend.h) for one device. Its methods are
// defined by op family across core/cuda/*.cu (copy_fill.cu, unary.cu, binary.cu,
// rows.cu, loss.cu, norm.cu, gemm.cu, indexing.cu); each launches on the device's compute
// stream and returns without synchronising.
#pragma once

#include "core/backend.h"
#include "core/cuda/device.cuh"

namespace ssmtrain::cuda_detail {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {}
  int device() const { return device_; }

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

  void synchronize() override;

 private:
  int device_;
};

// The compute stream and context of the device a tensor lives on.
inline DeviceContext& context_of(const Tensor& t) { return device_context(t.device().index); }
inline cudaStream_t stream_of(const Tensor& t) { return context_of(t).stream.get(); }

}  // namespace ssmtrain::cuda_detail
