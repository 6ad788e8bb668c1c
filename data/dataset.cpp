#include "data/dataset.h"

#include <filesystem>

#include "core/error.h"
#include "data/sampler.h"
#include "data/synthetic.h"
#include "data/text.h"
#include "data/token_shards.h"

namespace ssmtrain {

namespace fs = std::filesystem;

namespace {

// *.bin files with "val" in their name directly inside the directories among `paths`.
std::vector<std::string> val_shards_beside(const std::vector<std::string>& paths) {
  std::vector<std::string> found;
  for (const auto& p : paths) {
    std::error_code ec;
    if (!fs::is_directory(p, ec)) continue;
    std::vector<std::string> here = shards_in_directory(p, "val");
    found.insert(found.end(), here.begin(), here.end());
  }
  return found;
}

std::vector<std::string> list_all(const std::vector<std::string>& specs, const std::string& split,
                                  const std::string& key) {
  SSMT_CHECK(!specs.empty(), key, ": is empty; kind shards needs shard files, directories or glob patterns");
  std::vector<std::string> files;
  for (const auto& s : specs) {
    std::vector<std::string> here = list_token_shards(s, split, key);
    files.insert(files.end(), here.begin(), here.end());
  }
  return files;
}

HoldOut holdout_for(const DataSpec& spec, HoldOut::Part part) {
  HoldOut h;
  h.part = part;
  h.fraction = spec.val_fraction;
  h.min_tokens = spec.val_min_tokens;
  return h;
}

void check_common(const DataSpec& spec, const std::string& split) {
  SSMT_CHECK(split == "train" || split == "val", "data: unknown split '", split, "'; expected train or val");
  SSMT_CHECK(spec.val_fraction >= 0 && spec.val_fraction < 1, "data.val_fraction: ", spec.val_fraction,
             " is outside [0, 1)");
  SSMT_CHECK(spec.val_min_tokens >= 0, "data: val_min_tokens ", spec.val_min_tokens, " is negative");
  SSMT_CHECK(spec.world_size >= 1 && spec.rank >= 0 && spec.rank < spec.world_size, "data: rank ", spec.rank,
             " of world_size ", spec.world_size, " is not a valid rank (expected 0 <= rank < world_size)");
}

std::string no_validation_message(const DataSpec& spec) {
  return detail::concat("data.val_path: is empty and data.val_fraction is 0, so the ", spec.kind,
                        " data has no validation split; set one of them");
}

std::unique_ptr<Dataset> make_text(const DataSpec& spec, bool val) {
  SSMT_CHECK(!spec.path.empty(), "data.path: is empty; kind text needs one or more text files (plain or .gz)");
  bool separate_val = !spec.val_path.empty();
  if (val) {
    if (separate_val)
      return std::make_unique<TextDataset>(spec.val_path, WindowOrder::sequential, spec.seed, spec.rank,
                                           spec.world_size, HoldOut{}, "data.val_path");
    SSMT_CHECK(spec.val_fraction > 0, no_validation_message(spec));
    return std::make_unique<TextDataset>(spec.path, WindowOrder::sequential, spec.seed, spec.rank, spec.world_size,
                                         holdout_for(spec, HoldOut::Part::tail), "data.path");
  }
  HoldOut h = separate_val || spec.val_fraction == 0 ? HoldOut{} : holdout_for(spec, HoldOut::Part::head);
  return std::make_unique<TextDataset>(spec.path, WindowOrder::shuffled, spec.seed, spec.rank, spec.world_size, h,
                                       "data.path");
}

std::unique_ptr<Dataset> make_shards(const DataSpec& spec, bool val) {
  SSMT_CHECK(!spec.path.empty(), "data.path: is empty; kind shards needs shard files, directories or glob patterns");
  SSMT_CHECK(spec.vocab_size >= 0, "model.vocab_size: ", spec.vocab_size, " is negative");
  // Where validation comes from, in order: data.val_path, *val* shards beside the training
  // shards in a data.path directory, or the tail of every training shard.
  std::vector<std::string> val_files;
  if (!spec.val_path.empty())
    val_files = list_all(spec.val_path, "val", "data.val_path");
  else
    val_files = val_shards_beside(spec.path);
  bool hold_out = val_files.empty() && spec.val_fraction > 0;
  if (val) {
    if (!val_files.empty())
      return std::make_unique<TokenShardDataset>(val_files, spec.vocab_size, WindowOrder::sequential, spec.seed,
                                                 spec.rank, spec.world_size);
    SSMT_CHECK(hold_out, no_validation_message(spec));
    return std::make_unique<TokenShardDataset>(list_all(spec.path, "train", "data.path"), spec.vocab_size,
                                               WindowOrder::sequential, spec.seed, spec.rank, spec.world_size,
                                               holdout_for(spec, HoldOut::Part::tail));
  }
  return std::make_unique<TokenShardDataset>(list_all(spec.path, "train", "data.path"), spec.vocab_size,
                                             WindowOrder::shuffled, spec.seed, spec.rank, spec.world_size,
                                             hold_out ? holdout_for(spec, HoldOut::Part::head) : HoldOut{});
}

}  // namespace

bool has_validation(const DataSpec& spec) {
  if (spec.kind == "synthetic") return true;
  if (!spec.val_path.empty() || spec.val_fraction > 0) return true;
  return spec.kind == "shards" && !val_shards_beside(spec.path).empty();
}

std::unique_ptr<Dataset> make_dataset(const DataSpec& spec, const std::string& split) {
  check_common(spec, split);
  bool val = split == "val";
  if (spec.kind == "text") return make_text(spec, val);
  if (spec.kind == "shards") return make_shards(spec, val);
  if (spec.kind == "synthetic") {
    SyntheticTask task = parse_synthetic_task(spec.task, "data.task");
    return std::make_unique<SyntheticDataset>(task, spec.task_vocab, spec.task_tokens, spec.seed, val, spec.rank,
                                              spec.world_size);
  }
  throw UserError("data.kind: unknown kind '" + spec.kind + "'; expected text, shards or synthetic");
}

}  // namespace ssmtrain
