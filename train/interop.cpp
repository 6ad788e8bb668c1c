#include "train/interop.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "core/error.h"
#include "ssm/mamba.h"
#include "ssm/mamba2.h"
#include "ssm/model.h"
#include "train/json.h"
#include "train/safetensors.h"

namespace fs = std::filesystem;

namespace ssmtrain {

WeightFormat parse_weight_format(const std::string& name) {
  if (name == "hf") return WeightFormat::hf;
  if (name == "mamba_ssm") return WeightFormat::mamba_ssm;
  throw UserError("--format: '" + name + "' is not a known format; choose hf (transformers) or mamba_ssm");
}

namespace {

// One parameter under our name and under the other code's; conv weights gain a middle
// axis of 1 there (PyTorch's Conv1d with groups = channels).
struct NamePair {
  std::string ours, theirs;
  bool conv = false;
};

// Our names follow mamba_ssm's, so a mixer's tensors differ only in the Mamba-2 gated
// norm (ours norm_weight, a parameter of the mixer; theirs norm.weight, a submodule).
std::vector<NamePair> name_map(const std::string& mixer, int64_t n_layer, WeightFormat format) {
  std::vector<NamePair> out;
  out.push_back(
      {"embedding.weight", format == WeightFormat::hf ? "backbone.embeddings.weight" : "backbone.embedding.weight"});
  for (int64_t i = 0; i < n_layer; ++i) {
    const std::string ours = "layers." + std::to_string(i) + ".", theirs = "backbone.layers." + std::to_string(i) + ".";
    out.push_back({ours + "norm.weight", theirs + "norm.weight"});
    std::vector<std::pair<std::string, std::string>> mixer_names;
    if (mixer == "mamba")
      mixer_names = {{"in_proj.weight", "in_proj.weight"},
                     {"conv1d.weight", "conv1d.weight"},
                     {"conv1d.bias", "conv1d.bias"},
                     {"x_proj.weight", "x_proj.weight"},
                     {"dt_proj.weight", "dt_proj.weight"},
                     {"dt_proj.bias", "dt_proj.bias"},
                     {"A_log", "A_log"},
                     {"D", "D"},
                     {"out_proj.weight", "out_proj.weight"}};
    else
      mixer_names = {{"in_proj.weight", "in_proj.weight"},
                     {"conv1d.weight", "conv1d.weight"},
                     {"conv1d.bias", "conv1d.bias"},
                     {"dt_bias", "dt_bias"},
                     {"A_log", "A_log"},
                     {"D", "D"},
                     {"norm_weight", "norm.weight"},
                     {"out_proj.weight", "out_proj.weight"}};
    for (const auto& [a, b] : mixer_names)
      out.push_back({ours + "mixer." + a, theirs + "mixer." + b, a == "conv1d.weight"});
  }
  out.push_back({"norm_f.weight", "backbone.norm_f.weight"});
  return out;
}

// The one mixer of every layer, which must be mamba (gated, selective) or mamba2.
std::string single_mixer(const ModelOptions& model, const char* what) {
  const std::vector<std::string> mixers = layer_mixers(model);
  for (size_t i = 0; i < mixers.size(); ++i) {
    SSMT_CHECK(mixers[i] == "mamba" || mixers[i] == "mamba2", what, ": layer ", i, " is a '", mixers[i],
               "' layer (model.mixer / model.layers); only stacks of mamba or of mamba2 layers have a counterpart in "
               "transformers and mamba_ssm");
    SSMT_CHECK(mixers[i] == mixers[0], what, ": layers mix '", mixers[0], "' and '", mixers[i],
               "' (model.layers); transformers and mamba_ssm hold one mixer type per model");
  }
  return mixers.at(0);
}

// A number as Python writes it: a JSON number (NaN / Infinity literals included), or the
// {"__float__": "Infinity"} object that recent transformers write for non-finite floats.
double python_float(const Json& v, const std::string& what) {
  if (const Json* f = json_find(v, "__float__")) {
    const std::string& s = json_string(*f, what);
    if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
    if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
    throw UserError(what + ": unknown __float__ value '" + s + "'");
  }
  return json_number(v, what);
}

SafeTensor to_safetensor(const HostArray& a, const std::string& name) {
  SSMT_CHECK(a.dtype == "f32", "parameter '", name, "' is stored as ", a.dtype, ", expected f32 master weights");
  return SafeTensor{"F32", a.shape, a.bytes};
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SSMT_CHECK(in.good(), "'", path, "': cannot open it");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

ExportResult export_weights(const Config& config, const ParamArrays& params, const std::string& outdir,
                            WeightFormat format) {
  const ModelOptions& m = config.model;
  const std::string mixer = single_mixer(m, "export");
  SSMT_CHECK(m.tie_embeddings, "export: model.tie_embeddings is false; only tied heads are supported");
  const int64_t vocab_padded = padded_vocab_size(m.vocab_size, m.pad_vocab_multiple);
  auto param = [&](const std::string& name) -> const HostArray& {
    auto it = params.find(name);
    SSMT_CHECK(it != params.end(), "export: the checkpoint has no parameter '", name, "'");
    return it->second;
  };
  SSMT_CHECK(param("embedding.weight").shape == std::vector<int64_t>({vocab_padded, m.d_model}),
             "export: embedding.weight does not have the shape the config gives (", vocab_padded, ", ", m.d_model, ")");
  if (format == WeightFormat::mamba_ssm)
    // mamba_ssm's blocks and its Mamba-2 gated norm use eps 1e-5 without a setting for it.
    SSMT_CHECK(m.norm_eps == 1e-5, "export --format mamba_ssm: model.norm_eps is ", m.norm_eps,
               "; mamba_ssm's norms have eps 1e-5 fixed");

  SafeTensorMap tensors;
  for (const NamePair& p : name_map(mixer, m.n_layer, format)) {
    SafeTensor t = to_safetensor(param(p.ours), p.ours);
    if (p.conv) {
      SSMT_CHECK(t.shape.size() == 2, "export: '", p.ours, "' is not (C, K)");
      t.shape = {t.shape[0], 1, t.shape[1]};
    }
    tensors.emplace(p.theirs, std::move(t));
  }
  // mamba_ssm's state dict lists the tied head under its own name too (load_state_dict is
  // strict); transformers ties lm_head to the embedding itself and save_pretrained omits it.
  if (format == WeightFormat::mamba_ssm) tensors.emplace("lm_head.weight", tensors.at("backbone.embedding.weight"));
  const size_t n_ours = name_map(mixer, m.n_layer, format).size();
  SSMT_CHECK(params.size() == n_ours, "export: the checkpoint holds ", params.size(), " parameters, a ", mixer,
             " model of this config has ", n_ours);

  ExportResult r;
  Json cfg = Json::object();
  if (format == WeightFormat::hf) {
    const bool v2 = mixer == "mamba2";
    r.architecture = v2 ? "Mamba2ForCausalLM" : "MambaForCausalLM";
    cfg["architectures"] = Json::array({r.architecture});
    cfg["model_type"] = v2 ? "mamba2" : "mamba";
    // transformers does not pad: its embedding has vocab_size rows, so it gets our padded rows.
    cfg["vocab_size"] = vocab_padded;
    cfg["hidden_size"] = m.d_model;
    cfg["state_size"] = m.d_state;
    cfg["num_hidden_layers"] = m.n_layer;
    cfg["layer_norm_epsilon"] = m.norm_eps;
    cfg["expand"] = m.expand;
    cfg["conv_kernel"] = m.d_conv;
    cfg["use_bias"] = false;
    cfg["use_conv_bias"] = true;
    cfg["hidden_act"] = "silu";
    cfg["residual_in_fp32"] = true;
    if (v2) {
      const auto& o = m.mixers.get<Mamba2Options>();
      cfg["num_heads"] = m.expand * m.d_model / o.headdim;
      cfg["head_dim"] = o.headdim;
      cfg["n_groups"] = o.ngroups;
      cfg["chunk_size"] = o.chunk_size;
    } else {
      // The resolved rank (model.dt_rank 0 means ceil(d_model / 16), as transformers' "auto").
      cfg["time_step_rank"] = param("layers.0.mixer.dt_proj.weight").shape.at(1);
    }
    cfg["tie_word_embeddings"] = true;
    cfg["rescale_prenorm_residual"] = false;
    cfg["torch_dtype"] = "float32";
  } else {
    const bool v2 = mixer == "mamba2";
    r.architecture = v2 ? "Mamba2" : "Mamba1";
    Json ssm = Json::object();
    ssm["layer"] = r.architecture;
    ssm["d_state"] = m.d_state;
    ssm["d_conv"] = m.d_conv;
    ssm["expand"] = m.expand;
    if (v2) {
      const auto& o = m.mixers.get<Mamba2Options>();
      ssm["headdim"] = o.headdim;
      ssm["ngroups"] = o.ngroups;
      ssm["chunk_size"] = o.chunk_size;
    } else {
      ssm["dt_rank"] = param("layers.0.mixer.dt_proj.weight").shape.at(1);
    }
    cfg["d_model"] = m.d_model;
    cfg["d_intermediate"] = 0;
    cfg["n_layer"] = m.n_layer;
    // mamba_ssm pads itself, from the unpadded size and the multiple.
    cfg["vocab_size"] = m.vocab_size;
    cfg["ssm_cfg"] = std::move(ssm);
    cfg["attn_layer_idx"] = Json::array();
    cfg["attn_cfg"] = Json::object();
    cfg["rms_norm"] = true;
    cfg["residual_in_fp32"] = true;
    cfg["fused_add_norm"] = true;
    cfg["pad_vocab_size_multiple"] = m.pad_vocab_multiple;
    cfg["tie_embeddings"] = true;
  }
  std::error_code ec;
  fs::create_directories(outdir, ec);
  SSMT_CHECK(!ec && fs::is_directory(outdir), "export: cannot create the output directory '", outdir, "'");
  r.config_path = (fs::path(outdir) / "config.json").string();
  r.weights_path = (fs::path(outdir) / "model.safetensors").string();
  r.tensors = static_cast<int64_t>(tensors.size());
  write_safetensors(r.weights_path, tensors, {{"format", "pt"}});
  write_file_atomically(r.config_path, cfg.dump(2) + "\n");
  return r;
}

namespace {

// config.json's keys with transformers' (or mamba_ssm's) defaults where a key is absent.
class ConfigKeys {
 public:
  ConfigKeys(const Json& obj, std::string file) : obj_(obj), file_(std::move(file)) {}
  std::string what(const std::string& key) const { return file_ + ": key '" + key + "'"; }
  const Json* get(const std::string& key) const { return json_find(obj_, key); }
  int64_t integer(const std::string& key, std::optional<int64_t> def = std::nullopt) const {
    const Json* v = get(key);
    if (!v || v->is_null()) {
      SSMT_CHECK(def.has_value(), file_, ": has no key '", key, "'");
      return *def;
    }
    return json_int(*v, what(key));
  }
  double number(const std::string& key, double def) const {
    const Json* v = get(key);
    return v && !v->is_null() ? json_number(*v, what(key)) : def;
  }
  bool boolean(const std::string& key, bool def) const {
    const Json* v = get(key);
    return v && !v->is_null() ? json_bool(*v, what(key)) : def;
  }
  std::string string(const std::string& key, const std::string& def) const {
    const Json* v = get(key);
    return v && !v->is_null() ? json_string(*v, what(key)) : def;
  }
  // A key whose value our model cannot honour.
  void require(bool ok, const std::string& key, const std::string& why) const {
    SSMT_CHECK(ok, file_, ": key '", key, "' ", why);
  }

 private:
  const Json& obj_;
  std::string file_;
};

SafeTensorMap read_weights(const std::string& dir) {
  const fs::path single = fs::path(dir) / "model.safetensors", index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(single)) return read_safetensors(single.string());
  if (fs::exists(index)) {
    // A sharded checkpoint: the index maps each tensor to the file that holds it.
    const Json j = parse_json(read_text(index.string()), index.string());
    const Json* map = json_find(j, "weight_map");
    SSMT_CHECK(map, index.string(), ": has no key 'weight_map'");
    std::set<std::string> files;
    for (const auto& [name, file] : json_object(*map, index.string() + ": key 'weight_map'").items())
      files.insert(json_string(file, index.string() + ": weight_map entry '" + name + "'"));
    SafeTensorMap all;
    for (const std::string& f : files) {
      SSMT_CHECK(f.find('/') == std::string::npos, index.string(), ": shard name '", f, "' is not a plain file name");
      for (auto& [name, t] : read_safetensors((fs::path(dir) / f).string())) {
        SSMT_CHECK(!all.count(name), index.string(), ": tensor '", name, "' appears in two shards");
        all.emplace(name, std::move(t));
      }
    }
    return all;
  }
  SSMT_CHECK(!fs::exists(fs::path(dir) / "pytorch_model.bin"), "import: '", dir,
             "' holds pytorch_model.bin but no model.safetensors; only safetensors are read (in Python: "
             "model.save_pretrained(dir, safe_serialization=True))");
  throw UserError("import: '" + dir + "' has no model.safetensors (nor model.safetensors.index.json)");
}

}  // namespace

ImportedModel import_weights(const std::string& dir) {
  SSMT_CHECK(fs::is_directory(dir), "import: '", dir,
             "' is not a directory (expected one holding config.json and "
             "model.safetensors)");
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  SSMT_CHECK(fs::exists(cfg_path), "import: '", cfg_path, "': no such file");
  const Json cfg_json = parse_json(read_text(cfg_path), cfg_path);
  SSMT_CHECK(cfg_json.is_object(), cfg_path, ": expected a JSON object");
  const ConfigKeys k(cfg_json, cfg_path);

  ImportedModel out;
  ModelOptions& m = out.config.model;
  WeightFormat format;
  if (k.get("model_type")) {
    format = WeightFormat::hf;
    const std::string type = k.string("model_type", "");
    k.require(type == "mamba" || type == "mamba2", "model_type",
              "is '" + type + "'; only mamba (MambaForCausalLM) and mamba2 (Mamba2ForCausalLM) can be imported");
    const bool v2 = type == "mamba2";
    m.mixer = v2 ? "mamba2" : "mamba";
    m.d_model = k.integer("hidden_size");
    m.n_layer = k.integer("num_hidden_layers");
    m.vocab_size = k.integer("vocab_size");
    m.d_state = k.integer("state_size", v2 ? 128 : 16);
    m.d_conv = k.integer("conv_kernel", 4);
    m.norm_eps = k.number("layer_norm_epsilon", 1e-5);
    const double expand = k.number("expand", 2);
    k.require(expand == std::floor(expand) && expand >= 1, "expand", "must be a whole number >= 1");
    m.expand = static_cast<int64_t>(expand);
    k.require(!k.boolean("use_bias", false), "use_bias", "is true; ssmtrain's in_proj and out_proj have no bias");
    k.require(k.boolean("use_conv_bias", true), "use_conv_bias", "is false; ssmtrain's conv1d always has a bias");
    k.require(k.string("hidden_act", "silu") == "silu", "hidden_act", "must be silu");
    if (v2) {
      auto& o = m.mixers.get<Mamba2Options>();
      o.headdim = k.integer("head_dim", 64);
      o.ngroups = k.integer("n_groups", 8);
      o.chunk_size = k.integer("chunk_size", 256);
      const int64_t heads = k.integer("num_heads", 128);
      k.require(heads * o.headdim == m.expand * m.d_model, "num_heads",
                "times head_dim must equal expand * hidden_size");
      k.require(k.boolean("rms_norm", true), "rms_norm", "is false; ssmtrain's Mamba-2 always has the gated RMSNorm");
      if (const Json* lim = k.get("time_step_limit")) {
        const Json& a = json_array(*lim, k.what("time_step_limit"));
        k.require(a.size() == 2 && python_float(a[0], k.what("time_step_limit")) == 0 &&
                      std::isinf(python_float(a[1], k.what("time_step_limit"))),
                  "time_step_limit", "must be [0, Infinity]; ssmtrain does not clamp dt");
      }
    } else {
      const int64_t auto_rank = (m.d_model + 15) / 16;
      const Json* r = k.get("time_step_rank");
      const int64_t rank = r && r->is_number() ? json_int(*r, k.what("time_step_rank")) : auto_rank;
      m.mixers.get<MambaOptions>().dt_rank = rank == auto_rank ? 0 : rank;
    }
    // transformers does not pad the vocabulary; keep its size as it is (no padded rows).
    m.pad_vocab_multiple = m.vocab_size % 8 == 0 ? 8 : 1;
    const bool tied = k.boolean("tie_word_embeddings", !v2);
    out.source = std::string("transformers ") + (v2 ? "Mamba2ForCausalLM" : "MambaForCausalLM");
    (void)tied;  // checked against lm_head.weight below
  } else if (k.get("ssm_cfg") || k.get("d_model")) {
    format = WeightFormat::mamba_ssm;
    m.d_model = k.integer("d_model");
    m.n_layer = k.integer("n_layer");
    m.vocab_size = k.integer("vocab_size");
    m.pad_vocab_multiple = k.integer("pad_vocab_size_multiple", 8);
    k.require(k.integer("d_intermediate", 0) == 0, "d_intermediate", "is not 0; MLP blocks are not imported");
    const Json* attn = k.get("attn_layer_idx");
    k.require(!attn || attn->is_null() || json_array(*attn, k.what("attn_layer_idx")).empty(), "attn_layer_idx",
              "is not empty; attention layers are not imported");
    k.require(k.boolean("rms_norm", true), "rms_norm", "is false; ssmtrain's blocks use RMSNorm");
    k.require(k.boolean("tie_embeddings", true), "tie_embeddings", "is false; ssmtrain's head is always tied");
    static const Json empty = Json::object();
    const Json* ssm_json = k.get("ssm_cfg");
    const ConfigKeys s(ssm_json ? *ssm_json : empty, cfg_path + " ssm_cfg");
    const std::string layer = s.string("layer", "Mamba1");
    s.require(layer == "Mamba1" || layer == "Mamba2", "layer", "is '" + layer + "'; expected Mamba1 or Mamba2");
    const bool v2 = layer == "Mamba2";
    m.mixer = v2 ? "mamba2" : "mamba";
    m.d_state = s.integer("d_state", v2 ? 128 : 16);
    m.d_conv = s.integer("d_conv", 4);
    m.expand = s.integer("expand", 2);
    m.norm_eps = 1e-5;
    s.require(s.boolean("conv_bias", true), "conv_bias", "is false; ssmtrain's conv1d always has a bias");
    s.require(!s.boolean("bias", false), "bias", "is true; ssmtrain's in_proj and out_proj have no bias");
    if (v2) {
      auto& o = m.mixers.get<Mamba2Options>();
      o.headdim = s.integer("headdim", 64);
      o.ngroups = s.integer("ngroups", 1);
      o.chunk_size = s.integer("chunk_size", 256);
      s.require(s.boolean("rmsnorm", true), "rmsnorm", "is false; ssmtrain's Mamba-2 always has the gated RMSNorm");
      s.require(!s.boolean("norm_before_gate", false), "norm_before_gate", "is true; ssmtrain gates before the norm");
      const Json* d_ssm = s.get("d_ssm");
      s.require(!d_ssm || d_ssm->is_null() || json_int(*d_ssm, s.what("d_ssm")) == m.expand * m.d_model, "d_ssm",
                "must be null (all of d_inner through the SSM)");
    } else {
      const Json* r = s.get("dt_rank");
      const int64_t auto_rank = (m.d_model + 15) / 16;
      const int64_t rank = r && r->is_number() ? json_int(*r, s.what("dt_rank")) : auto_rank;
      m.mixers.get<MambaOptions>().dt_rank = rank == auto_rank ? 0 : rank;
    }
    out.source = std::string("mamba_ssm MambaLMHeadModel (") + layer + ")";
  } else {
    throw UserError(cfg_path +
                    ": neither a transformers config (no key 'model_type') nor a mamba_ssm config (no "
                    "key 'd_model')");
  }
  validate(m);

  // The model this config builds tells every name and shape we need.
  ModelSpec spec;
  spec.model = m;
  Generator gen(0);
  std::shared_ptr<LanguageModel> model;
  try {
    model = build_language_model(spec, gen);
  } catch (const UserError& e) {
    throw UserError(cfg_path + ": describes a model ssmtrain cannot build: " + e.what());
  }
  std::map<std::string, std::vector<int64_t>> want;
  for (const auto& p : model->named_parameters()) want[p.name] = p.tensor.shape().vec();

  SafeTensorMap tensors = read_weights(dir);
  const std::string wfile = (fs::path(dir) / "model.safetensors").string();
  const std::vector<NamePair> names = name_map(m.mixer, m.n_layer, format);
  SSMT_CHECK(names.size() == want.size(), "import: internal name map covers ", names.size(), " of ", want.size(),
             " parameters");
  for (const NamePair& p : names) {
    auto it = tensors.find(p.theirs);
    if (it == tensors.end() && p.ours == "embedding.weight") {
      // transformers reads either spelling (its load hook renames embedding. to embeddings.).
      it = tensors.find(format == WeightFormat::hf ? "backbone.embedding.weight" : "backbone.embeddings.weight");
    }
    SSMT_CHECK(it != tensors.end(), "import: '", wfile, "' has no tensor '", p.theirs, "' (our '", p.ours, "')");
    SafeTensor t = std::move(it->second);
    tensors.erase(it);
    if (p.conv) {
      SSMT_CHECK(t.shape.size() == 3 && t.shape[1] == 1, "import: tensor '", p.theirs, "' in '", wfile,
                 "' should be (channels, 1, kernel)");
      t.shape = {t.shape[0], t.shape[2]};
    }
    SSMT_CHECK(want.count(p.ours), "import: the model has no parameter '", p.ours, "'");
    const std::vector<int64_t>& shape = want.at(p.ours);
    auto shape_str = [](const std::vector<int64_t>& s) {
      std::string o = "(";
      for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
      return o + ")";
    };
    SSMT_CHECK(t.shape == shape, "import: tensor '", p.theirs, "' in '", wfile, "' has shape ", shape_str(t.shape),
               ", but config.json describes ", shape_str(shape), " for it");
    out.params[p.ours] = HostArray::from_vector(t.to_f32("import: tensor '" + p.theirs + "'"), shape);
  }
  if (auto head = tensors.find("lm_head.weight"); head != tensors.end()) {
    // Our head is the embedding; an lm_head that differs from it cannot be represented.
    const std::vector<float> h = head->second.to_f32("import: tensor 'lm_head.weight'");
    const HostArray& e = out.params.at("embedding.weight");
    SSMT_CHECK(h.size() * 4 == e.bytes.size() && std::memcmp(h.data(), e.bytes.data(), e.bytes.size()) == 0,
               "import: '", wfile,
               "': lm_head.weight differs from the embedding; ssmtrain's LM head is always tied "
               "to it (model.tie_embeddings)");
    tensors.erase(head);
  } else if (format == WeightFormat::hf) {
    SSMT_CHECK(k.boolean("tie_word_embeddings", m.mixer != "mamba2"), "import: ", cfg_path,
               " sets tie_word_embeddings false but '", wfile, "' holds no lm_head.weight");
  }
  if (!tensors.empty())
    throw UserError("import: '" + wfile + "' holds tensor '" + tensors.begin()->first + "', which is not part of a " +
                    m.mixer + " model of this config (" + std::to_string(tensors.size()) + " unexpected in all)");
  return out;
}

}  // namespace ssmtrain
