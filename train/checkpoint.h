// What a training checkpoint holds, on top of the HDF5 container (train/checkpoint_io.h):
// the model's parameters by dotted name, the optimizer state per parameter, the trainer's
// counters and RNG/data positions, and the resolved config text. docs/checkpoint.md lists
// every name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/module.h"
#include "optim/optimizer.h"
#include "train/checkpoint_io.h"

namespace ssmtrain {

// Everything besides parameters and optimizer state that exact resume needs.
struct TrainerState {
  int64_t step = 0;             // optimizer steps completed
  int64_t tokens = 0;           // training tokens consumed
  int64_t total_steps = 0;      // the run's planned length (for the schedule)
  int64_t nonfinite_total = 0;  // skipped updates so far
  int64_t nonfinite_in_row = 0;
  uint64_t rng_seed = 0, rng_offset = 0;  // the trainer's generator (dropout, sampling)
  std::string data_kind;                  // the training data cursor
  std::vector<int64_t> data_cursor;
};

// Writes model, optimizer (may be null), trainer state and config to `path` atomically
// (temporary file, flush, fsync, rename).
void save_checkpoint(const std::string& path, const Module& model, const Optimizer* optimizer,
                     const TrainerState& state, const std::string& config_yaml);

TrainerState read_trainer_state(const CheckpointReader& reader);
std::string read_config_text(const CheckpointReader& reader);

// Copies every parameter from the checkpoint into `model` (on the model's device). A
// missing parameter, an unexpected one, or a shape mismatch is a UserError naming the
// parameter and the file.
void load_model(const CheckpointReader& reader, Module& model);
// Restores the optimizer state; the optimizer type must match.
void load_optimizer(const CheckpointReader& reader, Optimizer& optimizer);

// Host copies of tensors (any device, f32/bf16/f64/i32/i64) and back.
HostArray to_host_array(const Tensor& t);
Tensor from_host_array(const HostArray& a, const std::string& what);

}  // namespace ssmtrain
