// The interchange and observability subcommands of `ssmtrain` (train/cli.h): export and
// import of weights in the transformers and mamba_ssm layouts (train/interop.h); logits,
// which writes a checkpoint's logits on given token ids so that another implementation can
// be compared with ours number by number; plot, the SVG picture of runs (train/plot.h).
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "core/autograd.h"
#include "core/backend.h"
#include "ssm/mamba.h"
#include "ssm/mamba2.h"
#include "train/checkpoint.h"
#include "train/cli.h"
#include "train/interop.h"
#include "train/plot.h"
#include "train/safetensors.h"
#include "train/setup.h"

namespace fs = std::filesystem;

namespace ssmtrain {

namespace {

std::vector<std::string> positionals_exactly(const Args& args, size_t n, const char* what) {
  SSMT_CHECK(args.positionals.size() == n, "ssmtrain ", args.command, ": expected ", what, " (see `ssmtrain ",
             args.command, " --help`)");
  return args.positionals;
}

// The checkpoint's config and parameters, as the file holds them.
std::pair<Config, ParamArrays> read_checkpoint_params(const std::string& path) {
  SSMT_CHECK(fs::exists(path), "checkpoint '", path, "': no such file");
  CheckpointReader reader(path);
  reader.verify();
  Config config = parse_config(read_config_text(reader), path);
  ParamArrays params;
  for (const std::string& name : reader.list("model")) params[name] = reader.read_array("model/" + name);
  return {config, params};
}

}  // namespace

int cmd_export(const Args& args) {
  const auto pos = positionals_exactly(args, 2, "CKPT.h5 OUTDIR");
  const WeightFormat format = parse_weight_format(args.get("--format", "hf"));
  auto [config, params] = read_checkpoint_params(pos[0]);
  ExportResult r = export_weights(config, params, pos[1], format);
  std::printf("exported %s (%s, %lld tensors)\n  %s\n  %s\n", pos[0].c_str(), r.architecture.c_str(),
              static_cast<long long>(r.tensors), r.config_path.c_str(), r.weights_path.c_str());
  return 0;
}

int cmd_import(const Args& args) {
  const auto pos = positionals_exactly(args, 2, "HF_DIR OUT.h5");
  ImportedModel im = import_weights(pos[0]);
  im.config.run.name = fs::path(pos[1]).stem().string();
  // A checkpoint's config must be a whole valid config, but the weights come with no data:
  // a synthetic task is the one data section that needs no files. Runs that fine-tune the
  // model (--init-from) bring their own config; eval takes data.* overrides.
  im.config.data.kind = "synthetic";
  // The weights go through the model built from the config, so the checkpoint has exactly
  // the names and shapes a run of this config loads (train --init-from).
  ModelSpec spec = model_spec(im.config);
  Generator gen(static_cast<uint64_t>(im.config.train.seed));
  std::shared_ptr<LanguageModel> model = build_language_model(spec, gen);
  {
    NoGradGuard ng;
    for (const auto& p : model->named_parameters()) {
      Tensor host = from_host_array(im.params.at(p.name), "parameter '" + p.name + "'");
      backend(p.tensor.device()).copy(host, p.tensor);
    }
  }
  TrainerState state;
  state.rng_seed = static_cast<uint64_t>(im.config.train.seed);
  save_checkpoint(pos[1], *model, nullptr, state, to_yaml(im.config));
  std::printf("imported %s (%s)\n  -> %s: %lld parameters\n", pos[0].c_str(), im.source.c_str(), pos[1].c_str(),
              static_cast<long long>(model->parameter_counts().total));
  // The keys a config needs to train from it (the rest of the model section at its defaults).
  const ModelOptions& m = im.config.model;
  std::printf("model section of a config that trains from it (train --init-from %s):\n", pos[1].c_str());
  std::printf(
      "model:\n  mixer: %s\n  d_model: %lld\n  n_layer: %lld\n  vocab_size: %lld\n  pad_vocab_multiple: %lld\n"
      "  d_state: %lld\n  d_conv: %lld\n  expand: %lld\n  norm_eps: %g\n",
      m.mixer.c_str(), static_cast<long long>(m.d_model), static_cast<long long>(m.n_layer),
      static_cast<long long>(m.vocab_size), static_cast<long long>(m.pad_vocab_multiple),
      static_cast<long long>(m.d_state), static_cast<long long>(m.d_conv), static_cast<long long>(m.expand),
      m.norm_eps);
  if (m.mixer == "mamba") {
    std::printf("  dt_rank: %lld\n", static_cast<long long>(m.mixers.get<MambaOptions>().dt_rank));
  } else {
    const auto& o = m.mixers.get<Mamba2Options>();
    std::printf("  headdim: %lld\n  ngroups: %lld\n  chunk_size: %lld\n", static_cast<long long>(o.headdim),
                static_cast<long long>(o.ngroups), static_cast<long long>(o.chunk_size));
  }
  return 0;
}

int cmd_logits(const Args& args) {
  std::vector<std::string> overrides, plain;
  for (const auto& p : args.positionals) (p.find('=') != std::string::npos ? overrides : plain).push_back(p);
  SSMT_CHECK(plain.size() == 1, "ssmtrain logits: expected one checkpoint (see `ssmtrain logits --help`)");
  SSMT_CHECK(args.has("--ids"), "ssmtrain logits: --ids \"ID ID ...\" is required");
  SSMT_CHECK(args.has("--out"), "ssmtrain logits: --out FILE.safetensors is required");
  const std::string path = plain[0];
  SSMT_CHECK(fs::exists(path), "checkpoint '", path, "': no such file");
  CheckpointReader reader(path);
  reader.verify();
  // Comparisons with other code are made in fp32 on the CPU, whatever the run trained with.
  overrides.push_back("train.device=cpu");
  overrides.push_back("train.precision=fp32");
  Config config = parse_config(read_config_text(reader), path, overrides);
  apply_compute_settings(config);
  Generator gen(static_cast<uint64_t>(config.train.seed));
  std::shared_ptr<LanguageModel> model = build_language_model(model_spec(config), gen);
  load_model(reader, *model);

  std::vector<int64_t> ids;
  std::istringstream in(args.get("--ids"));
  for (std::string tok; in >> tok;) {
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(tok, &used);
    } catch (...) {
    }
    SSMT_CHECK(used == tok.size() && id >= 0 && id < model->padded_vocab(), "--ids: '", tok,
               "' is not a token id in [0, ", model->padded_vocab(), ")");
    ids.push_back(id);
  }
  SSMT_CHECK(!ids.empty(), "--ids: no token ids given");
  const int64_t L = static_cast<int64_t>(ids.size());
  NoGradGuard ng;
  model->eval();
  Tensor logits = model->forward(Tensor::from_vector(ids, {1, L})).logits;  // (1, L, V_padded)
  SafeTensorMap out;
  out.emplace("logits", SafeTensor::from_f32(logits.contiguous().to_vector<float>(), logits.shape().vec()));
  std::vector<uint8_t> id_bytes(ids.size() * 8);
  std::memcpy(id_bytes.data(), ids.data(), id_bytes.size());
  out.emplace("ids", SafeTensor{"I64", {1, L}, std::move(id_bytes)});
  write_safetensors(args.get("--out"), out);
  std::printf("logits (1, %lld, %lld) of %s -> %s\n", static_cast<long long>(L),
              static_cast<long long>(model->padded_vocab()), path.c_str(), args.get("--out").c_str());
  return 0;
}

int cmd_plot(const Args& args) {
  SSMT_CHECK(!args.positionals.empty(), "ssmtrain plot: expected one or more run or sweep directories");
  std::string out = args.get("--out");
  if (out.empty())
    out = args.positionals.size() == 1 ? (fs::path(args.positionals[0]) / "plot.svg").string() : "plot.svg";
  SSMT_CHECK(fs::path(out).extension() == ".svg", "--out: '", out,
             "' must end in .svg (for PNG: rsvg-convert -o plot.png plot.svg, or ImageMagick's convert)");
  write_file_atomically(out, plot_runs_svg(args.positionals));
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace ssmtrain
