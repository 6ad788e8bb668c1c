#include "train/checkpoint.h"

#include <cmath>
#include <map>

#include "core/backend.h"
#include "core/ops.h"

namespace ssmtrain {

HostArray to_host_array(const Tensor& t) {
  NoGradGuard ng;
  HostArray a;
  a.shape = t.shape().vec();
  a.dtype = dtype_name(t.dtype());
  Tensor host = t.contiguous().to(Device::cpu());
  const auto* p = static_cast<const uint8_t*>(host.data_ptr());
  a.bytes.assign(p, p + host.nbytes());
  return a;
}

Tensor from_host_array(const HostArray& a, const std::string& what) {
  DType dt;
  try {
    dt = dtype_from_name(a.dtype);
  } catch (const UserError&) {
    throw UserError(what + ": unsupported stored dtype '" + a.dtype + "'");
  }
  Tensor t = Tensor::empty(Dims(a.shape), dt, Device::cpu());
  SSMT_CHECK(t.nbytes() == a.bytes.size(), what, ": stored size does not match its shape");
  std::copy(a.bytes.begin(), a.bytes.end(), static_cast<uint8_t*>(t.data_ptr()));
  return t;
}

void save_checkpoint(const std::string& path, const Module& model, const Optimizer* optimizer,
                     const TrainerState& s, const std::string& config_yaml) {
  CheckpointWriter w(path);
  w.write_string("config", config_yaml);
  for (const auto& p : model.named_parameters()) w.write_array("model/" + p.name, to_host_array(p.tensor));
  if (optimizer) {
    w.write_attr("optim", "type", std::string(optimizer->type_name()));
    for (const auto& st : optimizer->export_state())
      w.write_array("optim/" + st.kind + "/" + st.param_name, to_host_array(st.value));
  }
  w.write_attr("/", "step", s.step);
  w.write_attr("/", "tokens", s.tokens);
  w.write_attr("trainer", "total_steps", s.total_steps);
  w.write_attr("trainer", "nonfinite_total", s.nonfinite_total);
  w.write_attr("trainer", "nonfinite_in_row", s.nonfinite_in_row);
  w.write_attr("trainer", "rng_seed", s.rng_seed);
  w.write_attr("trainer", "rng_offset", s.rng_offset);
  w.write_attr("trainer", "data_kind", s.data_kind);
  w.write_array("trainer/data_cursor", HostArray::from_vector(s.data_cursor));
  w.commit();
}

TrainerState read_trainer_state(const CheckpointReader& r) {
  TrainerState s;
  s.step = r.attr_int("/", "step");
  s.tokens = r.attr_int("/", "tokens");
  s.total_steps = r.attr_int("trainer", "total_steps");
  s.nonfinite_total = r.attr_int("trainer", "nonfinite_total");
  s.nonfinite_in_row = r.attr_int("trainer", "nonfinite_in_row");
  s.rng_seed = r.attr_uint("trainer", "rng_seed");
  s.rng_offset = r.attr_uint("trainer", "rng_offset");
  s.data_kind = r.attr_string("trainer", "data_kind");
  s.data_cursor = r.read_array("trainer/data_cursor").as<int64_t>();
  return s;
}

std::string read_config_text(const CheckpointReader& r) { return r.read_string("config"); }

void load_model(const CheckpointReader& r, Module& model) {
  NoGradGuard ng;
  std::vector<std::string> stored = r.list("model");
  std::map<std::string, bool> seen;
  for (const auto& n : stored) seen[n] = false;
  for (const auto& p : model.named_parameters()) {
    auto it = seen.find(p.name);
    SSMT_CHECK(it != seen.end(), "checkpoint has no parameter '", p.name,
               "' (the model config differs from the one it was saved with)");
    it->second = true;
    Tensor host = from_host_array(r.read_array("model/" + p.name), "parameter '" + p.name + "'");
    SSMT_CHECK(host.shape() == p.tensor.shape(), "parameter '", p.name, "': checkpoint shape ", host.shape().str(),
               " does not match the model's ", p.tensor.shape().str());
    // A checksum proves the bytes are the ones written, not that training was healthy:
    // weights that are NaN or inf would only give a NaN loss or garbage samples later.
    const std::vector<double> values = host.to(DType::f64).contiguous().to_vector<double>();
    for (size_t i = 0; i < values.size(); ++i)
      SSMT_CHECK(std::isfinite(values[i]), "checkpoint parameter '", p.name, "' holds a non-finite value (",
                 values[i], " at element ", i, "): the run that saved it had diverged; resume from an earlier "
                 "checkpoint");
    backend(p.tensor.device()).copy(host.to(p.tensor.device()), p.tensor);
  }
  for (const auto& [name, used] : seen)
    SSMT_CHECK(used, "checkpoint parameter '", name, "' does not exist in the model (different config?)");
}

void load_optimizer(const CheckpointReader& r, Optimizer& optimizer) {
  SSMT_CHECK(r.has_attr("optim", "type"), "checkpoint holds no optimizer state");
  std::string type = r.attr_string("optim", "type");
  SSMT_CHECK(type == optimizer.type_name(), "checkpoint optimizer is '", type, "' but the config asks for '",
             optimizer.type_name(), "'");
  std::vector<StateTensor> state;
  for (const auto& rel : r.list("optim")) {
    auto slash = rel.find('/');
    SSMT_ASSERT(slash != std::string::npos, rel);
    StateTensor st;
    st.kind = rel.substr(0, slash);
    st.param_name = rel.substr(slash + 1);
    st.value = from_host_array(r.read_array("optim/" + rel), "optimizer state '" + rel + "'");
    state.push_back(std::move(st));
  }
  optimizer.import_state(state);
}

}  // namespace ssmtrain
