// Weights out of and into ssmtrain in the formats other Mamba code reads (docs/interop.md):
//
//  - hf: a Hugging Face transformers directory, config.json + model.safetensors, that
//    MambaForCausalLM / Mamba2ForCausalLM load with from_pretrained as it is;
//  - mamba_ssm: the state dict of mamba_ssm's MambaLMHeadModel (its parameter names and
//    shapes, lm_head.weight included) as model.safetensors, with the config.json its
//    MambaConfig takes.
//
// The models are the same functions in all three code bases, so a conversion only renames
// tensors and reshapes the depthwise conv weight (ours (C, K), theirs (C, 1, K)); no value
// is changed, and an export followed by an import gives back the same bits. Only stacks of
// one mixer, mamba or mamba2, have a counterpart; anything else is refused naming the key.
#pragma once

#include <map>
#include <string>

#include "train/checkpoint_io.h"
#include "train/config.h"

namespace ssmtrain {

enum class WeightFormat { hf, mamba_ssm };
// "hf" or "mamba_ssm"; UserError naming --format otherwise.
WeightFormat parse_weight_format(const std::string& name);

// A model's parameters on the host by our names (model/<name> of a checkpoint), f32.
using ParamArrays = std::map<std::string, HostArray>;

struct ExportResult {
  std::string architecture;  // "MambaForCausalLM", "Mamba2ForCausalLM", or mamba_ssm's layer "Mamba1"/"Mamba2"
  std::string config_path, weights_path;
  int64_t tensors = 0;
};

// Writes outdir/config.json and outdir/model.safetensors (creating outdir) for the model
// that `config` describes, from its parameters `params`.
ExportResult export_weights(const Config& config, const ParamArrays& params, const std::string& outdir,
                            WeightFormat format);

struct ImportedModel {
  Config config;       // the model section filled in; everything else at its defaults
  ParamArrays params;  // by our names, f32
  std::string source;  // what was read: "transformers MambaForCausalLM", "mamba_ssm Mamba2", ...
};

// Reads a directory written by export_weights or by transformers' save_pretrained (or a
// mamba_ssm checkpoint saved as safetensors): config.json plus model.safetensors, or the
// shards listed in model.safetensors.index.json. F16/BF16/F64 weights become f32. Every
// tensor the model needs must be there with its exact shape and nothing else may be (an
// untied lm_head that differs from the embedding is refused: ours is always tied).
ImportedModel import_weights(const std::string& dir);

}  // namespace ssmtrain
