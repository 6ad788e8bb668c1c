// The thread-local tape and the reverse loop (see autograd.h).
#include "core/autograd.h"

#include <unordered_map>

#include "core/backend.h"
#include "core/ops.h"
#include "core/profiler.h"

namespace ssmtrain {

namespace {

struct Node {
  const char* name;
  std::vector<std::shared_ptr<AutogradMeta>> inputs;   // null where the input needs no grad
  std::vector<Dims> input_shapes;
  std::vector<DType> input_dtypes;
  std::vector<std::shared_ptr<AutogradMeta>> outputs;
  std::vector<Dims> output_shapes;
  std::vector<DType> output_dtypes;
  Device device;
  BackwardFn fn;
};

struct Tape {
  std::vector<Node> nodes;
  int no_grad_depth = 0;
};

thread_local Tape g_tape;
// The inputs of the node whose closure is running (for take_input_grad); null outside one.
thread_local const std::vector<std::shared_ptr<AutogradMeta>>* g_running_inputs = nullptr;

// Sets g_running_inputs for a closure's run, restoring the outer one (nested backwards).
class RunningNode {
 public:
  explicit RunningNode(const std::vector<std::shared_ptr<AutogradMeta>>* inputs) : saved_(g_running_inputs) {
    g_running_inputs = inputs;
  }
  ~RunningNode() { g_running_inputs = saved_; }
  RunningNode(const RunningNode&) = delete;
  RunningNode& operator=(const RunningNode&) = delete;

 private:
  const std::vector<std::shared_ptr<AutogradMeta>>* saved_;
};

// grad += g, out of place so that a gradient shared with a saved tensor is never mutated.
void accumulate(AutogradMeta& meta, const Tensor& g) {
  if (!meta.grad) {
    meta.grad = g.impl_ptr();
  } else {
    meta.grad = add(Tensor(meta.grad), g).impl_ptr();
  }
}

}  // namespace

NoGradGuard::NoGradGuard() { ++g_tape.no_grad_depth; }
NoGradGuard::~NoGradGuard() { --g_tape.no_grad_depth; }

EnableGradGuard::EnableGradGuard() : saved_depth_(g_tape.no_grad_depth) { g_tape.no_grad_depth = 0; }
EnableGradGuard::~EnableGradGuard() { g_tape.no_grad_depth = saved_depth_; }

bool grad_enabled() { return g_tape.no_grad_depth == 0; }

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const char* op_name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward_fn) {
  Node node;
  node.name = op_name;
  node.fn = std::move(backward_fn);
  for (const Tensor& t : inputs) {
    node.inputs.push_back(t.defined() && t.requires_grad() ? t.impl()->autograd : nullptr);
    node.input_shapes.push_back(t.defined() ? t.shape() : Dims{});
    node.input_dtypes.push_back(t.defined() ? t.dtype() : DType::f32);
  }
  SSMT_ASSERT(!outputs.empty(), op_name);
  node.device = outputs[0].device();
  for (const Tensor& t : outputs) {
    auto meta = std::make_shared<AutogradMeta>();
    meta->requires_grad = true;
    meta->is_leaf = false;
    t.impl()->autograd = meta;
    node.outputs.push_back(meta);
    node.output_shapes.push_back(t.shape());
    node.output_dtypes.push_back(t.dtype());
  }
  g_tape.nodes.push_back(std::move(node));
  // Ops record after launching their kernels: the profiler's span of this op ends here.
  profiler::mark(op_name);
}

Tensor take_input_grad(size_t i, const Dims& shape, DType dtype) {
  if (!g_running_inputs || i >= g_running_inputs->size()) return Tensor();
  const std::shared_ptr<AutogradMeta>& meta = (*g_running_inputs)[i];
  if (!meta || meta->is_leaf || !meta->grad) return Tensor();
  const std::shared_ptr<TensorImpl>& impl = meta->grad;
  // The only reference to the gradient and to its storage is the tape's: nobody can see an
  // in-place change (a view of the same storage, e.g. a cat's backward, keeps it shared).
  if (impl.use_count() != 1 || !impl->storage || impl->storage.use_count() != 1) return Tensor();
  Tensor g(impl);
  if (g.shape() != shape || g.dtype() != dtype || !g.is_contiguous()) return Tensor();
  meta->grad.reset();
  return g;
}

void backward(const Tensor& root, const Tensor& grad) { backward(std::vector<Tensor>{root}, {grad}); }

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads) { backward(roots, grads, nullptr); }

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, const GradReadyFn& on_grad_ready) {
  SSMT_CHECK(roots.size() == grads.size(), "backward: ", roots.size(), " roots and ", grads.size(), " gradients");
  std::vector<Tensor> seeds;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& root = roots[i];
    SSMT_CHECK(root.defined() && root.requires_grad(), "backward: ", root.describe(),
               " does not require grad (no trainable input reached it)");
    Tensor seed = grads[i];
    if (!seed.defined()) {
      SSMT_CHECK(root.numel() == 1, "backward: ", root.describe(),
                 " is not a single element; pass the gradient of the root explicitly");
      seed = Tensor::ones(root.shape(), root.dtype(), root.device());
    }
    SSMT_CHECK(seed.shape() == root.shape() && seed.dtype() == root.dtype(), "backward: seed gradient ",
               seed.describe(), " does not match root ", root.describe());
    seeds.push_back(seed);
  }
  NoGradGuard no_grad;
  profiler::reset_mark();  // the first node's span begins here, not at the last forward op
  for (size_t i = 0; i < roots.size(); ++i) accumulate(*roots[i].impl()->autograd, seeds[i]);

  std::vector<Node> nodes;
  nodes.swap(g_tape.nodes);  // the tape is consumed even if a backward closure throws
  // For the hook: the leaves each node is the last to accumulate into. The reverse loop
  // reaches node k after every node above it, so a leaf's last accumulation is at the
  // lowest index that takes it as an input.
  std::vector<std::vector<const AutogradMeta*>> ready_after;
  if (on_grad_ready) {
    std::unordered_map<const AutogradMeta*, size_t> lowest;
    for (size_t k = 0; k < nodes.size(); ++k)
      for (const auto& m : nodes[k].inputs)
        if (m && m->is_leaf) lowest.emplace(m.get(), k);  // keeps the first (lowest) index
    ready_after.resize(nodes.size());
    for (const auto& [meta, k] : lowest) ready_after[k].push_back(meta);
  }
  auto report_ready = [&](size_t k) {
    if (!on_grad_ready) return;
    for (const AutogradMeta* meta : ready_after[k]) on_grad_ready(*meta);
  };
  for (size_t k = nodes.size(); k-- > 0;) {
    Node& node = nodes[k];
    bool any = false;
    for (auto& m : node.outputs) any = any || m->grad != nullptr;
    bool wanted = false;
    for (auto& m : node.inputs) wanted = wanted || m != nullptr;
    if (!any || !wanted) {
      for (auto& m : node.outputs) m->grad.reset();
      node.fn = nullptr;
      report_ready(k);
      continue;
    }
    std::vector<Tensor> grads_out;
    for (size_t i = 0; i < node.outputs.size(); ++i) {
      auto& m = node.outputs[i];
      grads_out.push_back(m->grad ? Tensor(m->grad)
                                  : Tensor::zeros(node.output_shapes[i], node.output_dtypes[i], node.device));
      m->grad.reset();  // intermediate gradients die with their node
    }
    std::vector<Tensor> grads_in;
    {
      RunningNode running(&node.inputs);
      grads_in = node.fn(grads_out);
    }
    SSMT_ASSERT(grads_in.size() == node.inputs.size(), node.name, ": backward returned ", grads_in.size(),
                " gradients for ", node.inputs.size(), " inputs");
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      if (!node.inputs[i] || !grads_in[i].defined()) continue;
      const Tensor& g = grads_in[i];
      SSMT_ASSERT(g.shape() == node.input_shapes[i], node.name, ": gradient of input ", i, " has shape ",
                  g.shape().str(), ", expected ", node.input_shapes[i].str());
      SSMT_ASSERT(g.dtype() == node.input_dtypes[i], node.name, ": gradient of input ", i, " has dtype ",
                  dtype_name(g.dtype()), ", expected ", dtype_name(node.input_dtypes[i]));
      accumulate(*node.inputs[i], g);
    }
    node.fn = nullptr;  // frees the saved tensors now
    report_ready(k);
    // The span "<op>_backward" runs from the previous node's end: the output gradients, the
    // closure, the accumulation and the freeing of the saved tensors.
    if (profiler::recording()) profiler::mark(profiler::backward_name(node.name));
  }
}

void clear_tape() { g_tape.nodes.clear(); }
size_t tape_size() { return g_tape.nodes.size(); }

Tensor sum_to_shape(const Tensor& g, const Dims& shape) {
  if (g.shape() == shape) return g;
  int lead = g.dim() - shape.size();
  SSMT_ASSERT(lead >= 0, "sum_to_shape: ", g.shape().str(), " -> ", shape.str());
  Dims axes;
  for (int i = 0; i < g.dim(); ++i)
    if (i < lead || (shape[i - lead] == 1 && g.size(i) != 1)) axes.push_back(i);
  Tensor r = axes.empty() ? g : sum(g, axes, true);
  return r.reshape(shape);
}

}  // namespace ssmtrain
