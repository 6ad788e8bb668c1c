#include "core/recompute.h"

#include "core/autograd.h"

namespace ssmtrain {

std::vector<Tensor> recompute(const char* name, const RecomputeFn& fn, const std::vector<Tensor>& inputs,
                              const std::vector<Tensor>& params) {
  std::vector<Tensor> node_inputs = inputs;
  node_inputs.insert(node_inputs.end(), params.begin(), params.end());
  if (!any_requires_grad(node_inputs)) return fn(inputs);

  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = fn(inputs);
  }
  std::vector<size_t> recorded;  // indices of the defined outputs: the node's outputs
  std::vector<Tensor> node_outputs;
  for (size_t k = 0; k < outputs.size(); ++k)
    if (outputs[k].defined()) {
      recorded.push_back(k);
      node_outputs.push_back(outputs[k]);
    }
  if (node_outputs.empty()) return outputs;

  std::vector<Tensor> saved;
  std::vector<bool> wants;
  for (const Tensor& x : inputs) {
    saved.push_back(x.defined() ? x.detach() : Tensor());
    wants.push_back(x.defined() && x.requires_grad());
  }
  const size_t n_params = params.size();
  record(name, node_inputs, node_outputs,
         [fn, saved, wants, recorded, n_params](const std::vector<Tensor>& g) -> std::vector<Tensor> {
           std::vector<Tensor> leaves;
           for (size_t i = 0; i < saved.size(); ++i) {
             Tensor x = saved[i].defined() ? saved[i].detach() : Tensor();
             if (wants[i]) x.requires_grad_(true);
             leaves.push_back(x);
           }
           {
             EnableGradGuard grad_on;  // backward closures run with recording off
             std::vector<Tensor> again = fn(leaves);
             std::vector<Tensor> roots, seeds;
             for (size_t j = 0; j < recorded.size(); ++j) {
               const Tensor& out = again[recorded[j]];
               SSMT_ASSERT(out.defined() && out.shape() == g[j].shape() && out.dtype() == g[j].dtype(),
                           "recompute: output ", recorded[j], " changed between the forward and its recomputation");
               if (out.requires_grad()) {
                 roots.push_back(out);
                 seeds.push_back(g[j]);
               }
             }
             if (roots.empty())
               clear_tape();
             else
               backward(roots, seeds);  // consumes the recomputed graph
           }
           std::vector<Tensor> grads;
           for (size_t i = 0; i < leaves.size(); ++i) grads.push_back(wants[i] ? leaves[i].grad() : Tensor());
           grads.resize(grads.size() + n_params);  // parameter gradients were accumulated above
           return grads;
         });
  for (size_t j = 0; j < recorded.size(); ++j) outputs[recorded[j]] = node_outputs[j];
  return outputs;
}

}  // namespace ssmtrain
