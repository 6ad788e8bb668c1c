// Activation recomputation (gradient checkpointing) on the tape.
//
// recompute(name, fn, inputs, params) runs fn(inputs) with recording off, so none of fn's
// intermediate tensors are kept, and records ONE node holding only the inputs. Its backward
// runs fn again with recording on, from detached copies of the inputs, and differentiates
// that recomputed graph with a nested backward(): the gradients of `params` (leaves used by
// fn) accumulate there directly, the gradients of `inputs` are returned to the outer tape.
// The recomputed forward repeats the same kernels on the same data, so the gradients are
// those of the plain graph, bitwise when each input of fn has no consumer outside fn (as in
// the LM, where a block's input feeds only that block); an input also used after fn gets its
// gradient contributions summed in another grouping, equal up to rounding. fn must be
// deterministic (no fresh random draws: callers reject dropout) and free of side effects
// other than what it returns.
//
// Cost: one more forward of fn per backward; memory: the inputs instead of everything fn
// saves for its backward.
#pragma once

#include <functional>
#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

using RecomputeFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

// fn's outputs may include undefined tensors (returned as they are). `params`: the trainable
// leaves fn reads (a node needs at least one input or parameter that requires grad to run).
std::vector<Tensor> recompute(const char* name, const RecomputeFn& fn, const std::vector<Tensor>& inputs,
                              const std::vector<Tensor>& params);

}  // namespace ssmtrain
