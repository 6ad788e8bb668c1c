// Parameter initialisers, in place and deterministic.
//
// Every random initialiser draws from a counter-based Generator (core/random.h): element i
// of the tensor uses counter gen.offset() + i and the generator advances by numel, so the
// same seed gives the same weights on CPU and CUDA and whatever the thread count. Tensors
// must be contiguous (parameters always are). Initialisers never record on the tape.
#pragma once

#include <string>
#include <vector>

#include "core/random.h"
#include "core/tensor.h"

namespace ssmtrain {

class Module;

namespace init {

void normal_(const Tensor& t, Generator& gen, double mean = 0.0, double std = 1.0);
void uniform_(const Tensor& t, Generator& gen, double low, double high);
void constant_(const Tensor& t, double value);
void zeros_(const Tensor& t);
void scale_(const Tensor& t, double factor);  // t *= factor

// fan_in of a weight laid out (out, in, *kernel): in * prod(kernel). 1-D tensors: size(0).
int64_t fan_in(const Tensor& t);
// PyTorch's kaiming_uniform_(a, mode="fan_in", nonlinearity="leaky_relu"):
// U(-bound, bound), bound = sqrt(6 / ((1 + a^2) fan_in)). a = sqrt(5), the nn.Linear
// default, gives bound = 1/sqrt(fan_in).
void kaiming_uniform_(const Tensor& t, Generator& gen, double a = 2.23606797749979);

// The GPT-2 / Mamba residual rescale: divides every parameter whose dotted name ends with
// one of `suffixes` by sqrt(n_residual_branches), so the residual stream's variance does
// not grow with depth. Returns how many tensors were rescaled. With our LM each block is
// one residual branch, so n_residual_branches = n_layer.
int rescale_residual_projections(Module& root, int n_residual_branches,
                                 const std::vector<std::string>& suffixes = {"out_proj.weight", "fc2.weight"});

}  // namespace init
}  // namespace ssmtrain
