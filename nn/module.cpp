// The parameter tree: registration, dotted names, tags, counting, moves.
#include "nn/module.h"

#include "core/autograd.h"
#include "core/error.h"

namespace ssmtrain {

void Module::check_new_name(const std::string& name, const char* what) const {
  SSMT_CHECK(!name.empty() && name.find('.') == std::string::npos, "register_", what, " '", name, "' in module '",
             path_, "': names must be non-empty and contain no '.'");
  bool taken = false;
  for (const auto& p : parameters_) taken = taken || p.name == name;
  for (const auto& b : buffers_) taken = taken || b.name == name;
  for (const auto& c : children_) taken = taken || c.first == name;
  SSMT_CHECK(!taken, "register_", what, " '", qualified(name), "': the name is already taken in this module");
}

Tensor Module::register_parameter(const std::string& name, Tensor value, std::set<std::string> tags) {
  check_new_name(name, "parameter");
  SSMT_CHECK(value.defined(), "register_parameter '", qualified(name), "': the tensor is undefined");
  SSMT_CHECK(is_floating(value.dtype()), "register_parameter '", qualified(name),
             "': parameters must be floating, got ", dtype_name(value.dtype()));
  // A parameter must be a leaf with its own storage: a view of another tensor (or an op
  // output) would tie its data to something the optimizer does not know about.
  if (!value.is_leaf() || !value.is_contiguous()) {
    NoGradGuard no_grad;
    value = value.contiguous().clone();
  }
  value.requires_grad_(true);
  value.set_name(qualified(name));
  parameters_.push_back({name, value, std::move(tags)});
  return value;
}

Tensor Module::register_buffer(const std::string& name, Tensor value) {
  check_new_name(name, "buffer");
  SSMT_CHECK(value.defined(), "register_buffer '", qualified(name), "': the tensor is undefined");
  value.set_name(qualified(name));
  buffers_.push_back({name, value});
  return value;
}

void Module::attach_child(const std::string& name, std::shared_ptr<Module> child) {
  check_new_name(name, "module");
  SSMT_CHECK(child != nullptr, "register_module '", qualified(name), "': the module is null");
  SSMT_CHECK(child.get() != this, "register_module '", qualified(name), "': a module cannot contain itself");
  child->set_path(qualified(name));
  children_.emplace_back(name, std::move(child));
}

void Module::set_path(const std::string& path) {
  path_ = path;
  for (auto& p : parameters_) p.tensor.set_name(qualified(p.name));
  for (auto& b : buffers_) b.tensor.set_name(qualified(b.name));
  for (auto& [name, child] : children_) child->set_path(qualified(name));
}

void Module::collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) const {
  for (const auto& p : parameters_) out.push_back({prefix + p.name, p.tensor, p.tags});
  for (const auto& [name, child] : children_) child->collect_parameters(prefix + name + ".", out);
}

void Module::collect_buffers(const std::string& prefix, std::vector<NamedBuffer>& out) const {
  for (const auto& b : buffers_) out.push_back({prefix + b.name, b.tensor});
  for (const auto& [name, child] : children_) child->collect_buffers(prefix + name + ".", out);
}

std::vector<NamedParameter> Module::named_parameters() const {
  std::vector<NamedParameter> out;
  collect_parameters("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& p : named_parameters()) out.push_back(p.tensor);
  return out;
}

std::vector<NamedBuffer> Module::named_buffers() const {
  std::vector<NamedBuffer> out;
  collect_buffers("", out);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (auto& [name, child] : children_)
    for (auto& [sub, m] : child->named_modules()) out.emplace_back(sub.empty() ? name : name + "." + sub, m);
  return out;
}

Tensor Module::parameter(const std::string& dotted_name) const {
  std::vector<NamedParameter> all = named_parameters();
  for (const auto& p : all)
    if (p.name == dotted_name) return p.tensor;
  std::string known;
  for (size_t i = 0; i < all.size() && i < 8; ++i) known += (i ? ", " : "") + all[i].name;
  if (all.size() > 8) known += ", ...";
  throw UserError(detail::concat("no parameter named '", dotted_name, "' in module '", path_, "' (it has ",
                                 all.size(), " parameters: ", known, ")"));
}

void Module::tag_parameter(const std::string& local_name, const std::string& tag) {
  for (auto& p : parameters_)
    if (p.name == local_name) {
      p.tags.insert(tag);
      return;
    }
  throw UserError(detail::concat("tag_parameter: module '", path_, "' has no parameter '", local_name, "'"));
}

void Module::tag_all_parameters(const std::string& tag) {
  for (auto& p : parameters_) p.tags.insert(tag);
  for (auto& [name, child] : children_) child->tag_all_parameters(tag);
}

int64_t Module::num_parameters() const {
  return num_parameters([](const NamedParameter&) { return true; });
}

int64_t Module::num_parameters(const std::function<bool(const NamedParameter&)>& keep) const {
  int64_t n = 0;
  for (const auto& p : named_parameters())
    if (keep(p)) n += p.tensor.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

template <typename Fn>
void Module::for_each_tensor(Fn&& fn) {
  for (auto& p : parameters_) fn(p.tensor);
  for (auto& b : buffers_) fn(b.tensor);
  for (auto& [name, child] : children_) child->for_each_tensor(fn);
}

namespace {
// Points `dst`'s TensorImpl at `src`'s data, keeping its name and autograd identity, so
// every copy of the parameter handle follows the move.
void rebind(Tensor& dst, const Tensor& src) {
  TensorImpl* impl = dst.impl();
  impl->storage = src.storage();
  impl->shape = src.shape();
  impl->strides = src.strides();
  impl->offset = src.offset();
  impl->dtype = src.dtype();
  dst.zero_grad();
}
}  // namespace

void Module::to(Device device) {
  NoGradGuard no_grad;
  for_each_tensor([&](Tensor& t) {
    if (t.device() == device) return;
    rebind(t, t.detach().to(device));
  });
}

void Module::to(DType dtype) {
  SSMT_CHECK(is_floating(dtype), "Module::to: parameters can only be converted to a floating dtype, not ",
             dtype_name(dtype));
  NoGradGuard no_grad;
  for_each_tensor([&](Tensor& t) {
    if (t.dtype() == dtype || !is_floating(t.dtype())) return;
    rebind(t, t.detach().to(dtype));
  });
}

void Module::zero_grad() {
  for (auto& p : parameters_) p.tensor.zero_grad();
  for (auto& [name, child] : children_) child->zero_grad();
}

// ---------------------------------------------------------------------------------------

void ModuleList::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(items_.size()), m);
  items_.push_back(std::move(m));
}

void ModuleList::throw_wrong_type(size_t i) const {
  throw UserError(detail::concat("module list '", path(), "': item ", i, " is not of the requested type"));
}

}  // namespace ssmtrain
