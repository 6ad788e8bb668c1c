// Building a dataset from a plain description, independent of the config system: the
// trainer fills a DataSpec from its `data` config section and calls make_dataset once per
// split. docs/data.md describes every source and how validation data is found.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"

namespace ssmtrain {

struct DataSpec {
  std::string kind = "text";              // text | shards | synthetic
  std::vector<std::string> path;          // text: files (plain or .gz); shards: files, directories or globs
  std::vector<std::string> val_path;      // validation data in the same form; empty = held out of `path`
  double val_fraction = 0.01;             // share of each file/shard held out when val_path is empty
  std::string task = "selective_copy";    // synthetic: selective_copy | induction | mqar
  int64_t task_vocab = 16, task_tokens = 16;
  uint64_t seed = 0;                      // shuffling and synthetic generation
  int rank = 0, world_size = 1;           // this process's share under data parallelism
  int64_t vocab_size = 0;                 // shards: the model's vocabulary; 0 = from the shard headers
  int64_t val_min_tokens = 0;             // a held-out tail is at least this long (e.g. eval seq_len + 1)
};

// True when `split` "val" has data: synthetic tasks always, text and shards when val_path
// is set, val_fraction > 0, or (shards) a path directory holds *val* shards.
bool has_validation(const DataSpec& spec);

// The training ("train": shuffled windows) or validation ("val": sequential windows) stream
// of this rank. UserError naming the key (data.path, data.val_path, data.task, ...) and the
// file on any problem, including a "val" request where has_validation() is false.
std::unique_ptr<Dataset> make_dataset(const DataSpec& spec, const std::string& split);

}  // namespace ssmtrain
