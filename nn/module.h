// Module: a node of the named parameter tree (PyTorch's nn::Module in spirit).
//
// A module registers its parameters, buffers and child modules under local names; the tree
// gives every parameter a dotted name ("layers.3.mixer.A_log") that is also set as the
// tensor's name, so error messages from any op name the parameter. Names are given in
// registration order: a module's own parameters first, then each child's, in the order the
// children were registered.
//
// Parameters carry tags that later layers read without knowing the model (param_tag below):
// the optimizer builds its groups from them, the trainer counts parameters with them.
//
// Moving a module (to(Device), to(DType)) rewrites each parameter's TensorImpl in place, so
// every Tensor copy a layer keeps as a member sees the moved data; names and tags survive.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

// Well-known parameter tags.
namespace param_tag {
inline const std::string no_decay = "no_decay";    // never weight-decayed (A_log, D, dt_bias, norms)
inline const std::string ssm = "ssm";              // S4-style SSM parameter: own lr, no decay
inline const std::string embedding = "embedding";  // counted apart: total vs non-embedding
inline const std::string expert = "expert";        // MoE expert weight: inactive for most tokens
}  // namespace param_tag

struct NamedParameter {
  std::string name;  // dotted, from the root the listing was asked of
  Tensor tensor;     // the leaf itself (shares storage and grad with the module's copy)
  std::set<std::string> tags;
  bool has_tag(const std::string& tag) const { return tags.count(tag) > 0; }
};

struct NamedBuffer {
  std::string name;
  Tensor tensor;
};

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // ---- registration (names: non-empty, no '.', unique within this module) ----
  // Makes `value` a trainable leaf (requires_grad) and names it; returns the same tensor.
  Tensor register_parameter(const std::string& name, Tensor value, std::set<std::string> tags = {});
  // Non-trainable state that moves with the module (precomputed kernels, running stats).
  Tensor register_buffer(const std::string& name, Tensor value);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> child) {
    attach_child(name, child);
    return child;
  }

  // ---- the tree ----
  std::vector<NamedParameter> named_parameters() const;
  std::vector<Tensor> parameters() const;
  std::vector<NamedBuffer> named_buffers() const;
  // (dotted name, module) for this module ("") and every descendant, depth first.
  std::vector<std::pair<std::string, Module*>> named_modules();
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  // A parameter by dotted name relative to this module; UserError listing close names.
  Tensor parameter(const std::string& dotted_name) const;

  // ---- tags ----
  // Adds `tag` to this module's own parameter `local_name`.
  void tag_parameter(const std::string& local_name, const std::string& tag);
  // Adds `tag` to every parameter of this subtree (e.g. an MoE expert tags itself "expert").
  void tag_all_parameters(const std::string& tag);

  // ---- counting ----
  int64_t num_parameters() const;
  int64_t num_parameters(const std::function<bool(const NamedParameter&)>& keep) const;

  // ---- mode, placement, gradients ----
  void train(bool on = true);  // recursive
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Moves (or converts) parameters and buffers in place; gradients are dropped.
  void to(Device device);
  void to(DType dtype);  // floating parameters and buffers only
  void zero_grad();

  // The dotted path of this module from the root it was registered under ("" at the root).
  const std::string& path() const { return path_; }

 private:
  struct ParameterSlot {
    std::string name;
    Tensor tensor;
    std::set<std::string> tags;
  };
  struct BufferSlot {
    std::string name;
    Tensor tensor;
  };

  void attach_child(const std::string& name, std::shared_ptr<Module> child);
  void check_new_name(const std::string& name, const char* what) const;
  // Re-derives the dotted names of this subtree below `path`.
  void set_path(const std::string& path);
  std::string qualified(const std::string& local) const { return path_.empty() ? local : path_ + "." + local; }
  void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) const;
  void collect_buffers(const std::string& prefix, std::vector<NamedBuffer>& out) const;
  template <typename Fn> void for_each_tensor(Fn&& fn);

  std::vector<ParameterSlot> parameters_;
  std::vector<BufferSlot> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::string path_;
  bool training_ = true;
};

// A list of child modules named "0", "1", ...
class ModuleList : public Module {
 public:
  void push_back(std::shared_ptr<Module> m);
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return items_.at(i); }
  // The i-th item as its concrete type (UserError if it is another type).
  template <typename M> std::shared_ptr<M> at(size_t i) const {
    auto p = std::dynamic_pointer_cast<M>(items_.at(i));
    if (!p) throw_wrong_type(i);
    return p;
  }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  [[noreturn]] void throw_wrong_type(size_t i) const;
  std::vector<std::shared_ptr<Module>> items_;
};

}  // namespace ssmtrain
