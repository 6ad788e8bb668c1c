// The tape: reverse-mode autodiff as one thread-local linear list of nodes.
//
// Each differentiable op records ONE node holding its backward closure and only what that
// closure needs. Forward order is already topological, so backward() is a reverse loop:
// each node reads the gradients of its outputs, returns the gradients of its inputs, which
// are accumulated (shape and dtype checked), and is then destroyed, freeing its saved
// tensors. Gradients of intermediate tensors are freed as soon as their producer ran.
//
// Adding a fused op (docs/autodiff.md): compute the forward with raw backend kernels,
// then, if any_requires_grad(inputs), call record() with a closure that computes all
// input gradients from the output gradients. The closure runs under NoGradGuard.
#pragma once

#include <functional>
#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

// Disables recording for its lifetime (nestable). Thread-local.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;
};

// Turns recording back on for its lifetime inside a NoGradGuard or a backward closure (the
// recomputation of core/recompute.h records and differentiates a sub-graph there).
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  int saved_depth_;
};

bool grad_enabled();

// True when recording is on and at least one (defined) input requires grad.
bool any_requires_grad(const std::vector<Tensor>& inputs);

// grads_in[i] is the gradient of outputs[i]: always defined and of its shape/dtype (zeros
// when that output was unused). Returns one gradient per input (undefined = none).
using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grads_in)>;

// Records a node: marks the outputs as non-leaf tensors requiring grad. Call only when
// any_requires_grad(inputs).
void record(const char* op_name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward_fn);

// Inside a backward closure: the gradient already accumulated for input i of the node being
// run, handed over to the closure when it is of `shape` and `dtype`, contiguous, of a tensor
// made by the tape (not a leaf's .grad) and held by nothing else (no other reference to it or
// to its storage). The closure may then add its own contribution in place (e.g. a GEMM with
// beta = 1, saving an add pass) and must return it as input i's gradient. Undefined otherwise
// (the closure returns its contribution as usual and the tape adds the two).
Tensor take_input_grad(size_t i, const Dims& shape, DType dtype);

// Runs the tape backwards from `root` (seed: `grad`, or 1 for a single-element root),
// accumulating into the .grad of leaves that require grad, then clears the tape.
void backward(const Tensor& root, const Tensor& grad = Tensor());
// The same from several roots at once, each with its seed (undefined = 1 for a single element).
// The tape must hold only the graph of these roots' history (a backward consumes the tape).
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads);

// Called once per leaf that requires grad, as soon as this backward has finished
// accumulating into its .grad: after the last node (in the reverse loop) that takes it as
// an input. Data parallelism starts a leaf's gradient communication there, overlapping the
// rest of the backward (train/grad_buckets.h). A leaf that no node of this tape reaches is
// not reported. Nested backwards (core/recompute.h) never call it: a recomputed block's
// parameters are inputs of its outer node, which reports them once its nested backward ran.
using GradReadyFn = std::function<void(const AutogradMeta& leaf)>;
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, const GradReadyFn& on_grad_ready);

// Drops all recorded nodes (e.g. after an evaluation forward with grad on).
void clear_tape();
size_t tape_size();

// Sum `g` down to `shape` over broadcast axes (the backward of broadcasting).
Tensor sum_to_shape(const Tensor& g, const Dims& shape);

}  // namespace ssmtrain
