// The frame of a fused op: one tape node whose forward and backward each run one kernel of a
// {CPU, CUDA} pair taking a plain params struct (pointers + sizes + strides, no Tensor).
// FusedOp<Params> holds what every such op would otherwise write by hand: the params, the
// kernel table, the dispatch to the device the tensors live on, the tensors the backward
// reads, and one gradient slot per input (allocated only for the inputs that want one).
// The op itself writes its argument checks, fills the params, and says how the backward
// finds the gradients of its outputs. How to add one (docs/design.md), in full:
//
//   // my_op.h: the params, shared by both backends
//   struct MyOpParams {
//     DType dtype = DType::f32;
//     int64_t B = 0, L = 0, C = 0;
//     SeqView x;                    // (B, L, C)
//     const void* w = nullptr;      // (C)
//     void* y = nullptr;            // (B, L, C), forward output
//     SeqView dy;                   // (B, L, C), backward input
//     void* dx = nullptr;           // (B, L, C), or null: not wanted
//     void* dw = nullptr;           // (C), or null
//   };
//   void my_op_fwd_cpu(const MyOpParams& p);              // my_op.cpp
//   void my_op_bwd_cpu(const MyOpParams& p);
//   void my_op_fwd_cuda(const MyOpParams& p, int device); // my_op_cuda.cu (CUDA builds)
//   void my_op_bwd_cuda(const MyOpParams& p, int device);
//
//   // my_op.cpp
//   const FusedKernels<MyOpParams> kMyOpKernels = {my_op_fwd_cpu, my_op_bwd_cpu,
//       SSMT_CUDA_KERNEL(my_op_fwd_cuda), SSMT_CUDA_KERNEL(my_op_bwd_cuda)};
//
//   Tensor my_op(const Tensor& x_in, const Tensor& w_in) {
//     ... argument checks naming the op and the tensor ...
//     Tensor x = with_contiguous_rows(x_in, 1), w = w_in.contiguous();
//     FusedOp<MyOpParams> op("my_op", kMyOpKernels, x.device());
//     op.p.dtype = x.dtype(), op.p.B = ..., op.p.x = seq_view(x), op.p.w = w.data_ptr();
//     op.input(x, &MyOpParams::dx);   // the tape input, the field for its gradient
//     op.input(w, &MyOpParams::dw);   // (saved for the backward unless told otherwise)
//     Tensor y = op.output({B, L, C}, x.dtype(), &MyOpParams::y);
//     op.forward();
//     op.record({y}, [](MyOpParams& q, const std::vector<Tensor>& grads) {
//       Tensor dy = with_contiguous_rows(grads[0], 1);  // grads[i]: of output i, never undefined
//       q.dy = seq_view(dy);
//       return std::vector<Tensor>{dy};  // what q now points at: kept alive for the kernel
//     });
//     return y;
//   }
//
// The backward gets a copy of the forward's params: pointers into saved inputs and saved
// outputs stay valid, other outputs are nulled, and each wanted gradient is allocated like
// its input (shape, dtype, device) and its pointer written to the input's slot; an unwanted
// gradient's slot stays null and the kernels skip it. A gradient slot is a field of Params
// (&Params::dx) or, for an element of an array field, a function returning it
// ([i](Params& q) -> void*& { return q.dmodes[i]; }).
#pragma once

#include <functional>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "core/tensor.h"

namespace ssmtrain {

// The UserError of an op run on CUDA in a build without CUDA kernels.
[[noreturn]] inline void throw_cuda_not_built(const char* op, Device device) {
  throw UserError(detail::concat(op, ": CUDA kernel not built yet (input on ", device.str(),
                                 "); run this op on the CPU"));
}

// The kernels of one fused op. The CUDA launchers run on the compute stream of `device`;
// they are null in builds without CUDA (SSMT_CUDA_KERNEL), where the op then refuses CUDA
// tensors.
template <typename Params>
struct FusedKernels {
  void (*forward_cpu)(const Params&) = nullptr;
  void (*backward_cpu)(const Params&) = nullptr;
  void (*forward_cuda)(const Params&, int device) = nullptr;
  void (*backward_cuda)(const Params&, int device) = nullptr;
};

// A CUDA launcher in a FusedKernels table: the function in CUDA builds, null otherwise (its
// definition is compiled only with CUDA). The one place the dispatch depends on the build.
#if defined(SSMTRAIN_WITH_CUDA)
#define SSMT_CUDA_KERNEL(launcher) (&(launcher))
#else
#define SSMT_CUDA_KERNEL(launcher) nullptr
#endif

template <typename Params>
class FusedOp {
 public:
  // Where the backward writes an input's gradient: a field of the backward's params.
  using GradSlot = std::function<void*&(Params&)>;

  // Throws (UserError) for a CUDA device when this build has no CUDA kernels: construct the
  // op after the argument checks and before any allocation.
  FusedOp(const char* name, const FusedKernels<Params>& kernels, Device device)
      : name_(name), kernels_(&kernels), device_(device) {
    if (device.is_cuda() && !kernels.forward_cuda) throw_cuda_not_built(name, device);
  }

  Params p;  // the forward's params: the op fills sizes, flags and input pointers

  // Declares the next input of the tape node (undefined: an absent optional input, which
  // gets no gradient). `grad` receives its gradient in the backward (empty: the op gives
  // none, e.g. for indices). `saved`: the backward reads t through the params, so keep it.
  void input(const Tensor& t, GradSlot grad, bool saved = true) {
    inputs_.push_back(t);
    slots_.push_back(t.defined() ? std::move(grad) : GradSlot());
    if (saved && t.defined()) saved_.push_back(t.detach());
  }

  // An input the node does not keep: the backward computes it again with `remat` (run
  // inside the backward, recording off) and points its params at the result with `bind`.
  // For a large activation that is cheap to recompute from tensors kept anyway (Mamba's
  // delta from the dt_proj product): memory of the forward for one more product in the
  // backward. remat must give t's values, shape, dtype and layout.
  void input_recomputed(const Tensor& t, GradSlot grad, std::function<Tensor()> remat,
                        std::function<void(Params&, const Tensor&)> bind) {
    input(t, std::move(grad), /*saved=*/false);
    if (t.defined()) remats_.push_back(Remat{std::move(remat), std::move(bind), t.shape(), t.dtype()});
  }

  // A new tensor the forward kernel writes, its pointer stored in `field`. Outputs the
  // backward reads (`saved`) stay valid in its params; the others are nulled there.
  Tensor output(const Dims& shape, DType dtype, void* Params::*field, bool saved = false) {
    Tensor t = Tensor::empty(shape, dtype, device_);
    p.*field = t.data_ptr();
    if (saved)
      saved_.push_back(t.detach());
    else
      unsaved_outputs_.push_back(field);
    return t;
  }

  // Keeps a tensor the params point at alive for the backward (a kernel operand that is not
  // itself a tape input, e.g. a contiguous copy).
  void save(const Tensor& t) {
    if (t.defined()) saved_.push_back(t.detach());
  }

  // True when the node will be recorded (grad mode on, an input requires grad): ops that
  // store extra state for the backward (checkpoints) ask before the forward.
  bool needs_grad() const { return any_requires_grad(inputs_); }

  const Device& device() const { return device_; }

  void forward() const { run(kernels_->forward_cpu, kernels_->forward_cuda, p); }

  // Records the node when needs_grad(). outputs: the tape outputs, in the order of the
  // gradients the backward receives. bind(q, grads) points the backward's params q at the
  // gradients of the outputs (converting them as the kernels need) and returns the tensors
  // it made q point at, which are kept alive while the backward kernel runs.
  template <typename Bind>
  void record(const std::vector<Tensor>& outputs, Bind bind) {
    if (!needs_grad()) return;
    struct Grad {
      GradSlot slot;  // empty: no gradient wanted
      Dims shape;
      DType dtype = DType::f32;
    };
    std::vector<Grad> grads(inputs_.size());
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const Tensor& t = inputs_[i];
      if (t.defined() && t.requires_grad() && slots_[i]) grads[i] = Grad{slots_[i], t.shape(), t.dtype()};
    }
    Params q = p;
    for (void* Params::*field : unsaved_outputs_) q.*field = nullptr;
    ::ssmtrain::record(name_, inputs_, outputs,
                       [q, grads = std::move(grads), saved = saved_, remats = remats_, bind, kernels = kernels_,
                        device = device_, name = name_](const std::vector<Tensor>& grads_out) -> std::vector<Tensor> {
                         Params b = q;
                         std::vector<Tensor> recomputed;
                         for (const Remat& r : remats) {
                           recomputed.push_back(r.remat());
                           const Tensor& t = recomputed.back();
                           SSMT_ASSERT(t.shape() == r.shape && t.dtype() == r.dtype, name,
                                       ": a recomputed input is ", t.describe(), ", expected ", r.shape.str());
                           r.bind(b, t);
                         }
                         const std::vector<Tensor> bound = bind(b, grads_out);
                         std::vector<Tensor> result(grads.size());
                         for (size_t i = 0; i < grads.size(); ++i) {
                           if (!grads[i].slot) continue;
                           result[i] = Tensor::empty(grads[i].shape, grads[i].dtype, device);
                           grads[i].slot(b) = result[i].data_ptr();
                         }
                         run_on(name, kernels->backward_cpu, kernels->backward_cuda, b, device);
                         return result;
                       });
  }

 private:
  using CpuKernel = void (*)(const Params&);
  using CudaKernel = void (*)(const Params&, int);

  static void run_on(const char* name, CpuKernel cpu, CudaKernel cuda, const Params& params, Device device) {
    if (!device.is_cuda()) return cpu(params);
    if (!cuda) throw_cuda_not_built(name, device);
    cuda(params, device.index);
  }
  void run(CpuKernel cpu, CudaKernel cuda, const Params& params) const { run_on(name_, cpu, cuda, params, device_); }

  const char* name_;
  const FusedKernels<Params>* kernels_;  // a table with static storage
  Device device_;
  std::vector<Tensor> inputs_;
  std::vector<GradSlot> slots_;
  std::vector<Tensor> saved_;
  std::vector<void* Params::*> unsaved_outputs_;
  struct Remat {
    std::function<Tensor()> remat;
    std::function<void(Params&, const Tensor&)> bind;
    Dims shape;
    DType dtype;
  };
  std::vector<Remat> remats_;
};

}  // namespace ssmtrain
