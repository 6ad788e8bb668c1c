// ZeRO-1 (dist.zero: 1): the AdamW state sharded over the ranks.
//
// GradBuckets (sharded) lays the parameters end to end in a flat index space of N elements
// and reduce-scatters the gradients so that rank r holds the averaged gradient of its
// shard [r S, (r + 1) S), S = ceil(N / W). A shard cuts parameters into pieces: each piece is
// a 1-D view of a parameter's elements that lie in the shard. An inner AdamW over those
// pieces (same groups, learning rates, weight decay and betas as the run's optimizer) keeps
// the state of this rank's elements only (2 N / W floats instead of 2 N) and updates them.
// AdamW is elementwise, so each element takes exactly the update it would take unsharded;
// only the global gradient norm of the clip is summed in another grouping (the shards'
// squared norms, over the ranks). Then every rank all-gathers the parameters.
//
// Checkpoints keep one layout whatever the world size: gather_state_into() collects the
// pieces' state into the run's (unsharded) optimizer on the main rank, which writes it as
// always (train/checkpoint.h); load_state_from() takes each rank's pieces out of the
// unsharded state every rank has read, so a checkpoint of 4 ranks resumes on 2 or on 1.
// The run's optimizer holds the whole state only between those calls and release().
#pragma once

#include <memory>
#include <vector>

#include "optim/adamw.h"
#include "optim/clip.h"
#include "train/grad_buckets.h"

namespace ssmtrain {

class ZeroOptimizer {
 public:
  // `full`: the run's AdamW (its groups and learning rate lead); `buckets` must be sharded.
  ZeroOptimizer(GradBuckets& buckets, const AdamW& full);

  // After buckets.finish(): clips by the global norm (max_norm <= 0: only measures), skips
  // when the norm or `loss` is not finite (the ranks' common verdict: a value on the
  // gradients' device, non-finite when some rank's loss is; undefined = finite), updates this
  // rank's pieces at full.lr() and all-gathers the parameters. The norm's squares are summed
  // over the ranks on the device and the clip status stays there: on CUDA nothing is read
  // back (AdamW applies the factor and the skip flag in its kernel); a skipped update
  // all-gathers unchanged parameters.
  DeviceClip step(const Optimizer& full, double max_norm, const Tensor& loss);

  // The clip status (optim/clip.h's layout) for the global squared norm `squares` ((1) f64)
  // and `loss` (may be undefined), computed with tensor ops where they are: exactly the host
  // clip's arithmetic (sqrt, max_norm / (norm + 1e-6), the factor only below 1).
  static Tensor clip_status(const Tensor& squares, double max_norm, const Tensor& loss);

  // Collective. The main rank's `full` receives the whole state (other ranks' is untouched).
  void gather_state_into(Optimizer& full);
  // Every rank: this rank's pieces take their part of `full`'s state; then full is emptied.
  void load_state_from(Optimizer& full);
  // Drops the whole state from `full` (after a checkpoint is written).
  static void release(Optimizer& full);

  int64_t state_elements() const;  // this rank's share of the parameters' elements
  const Optimizer& inner() const { return *inner_; }

 private:
  struct Piece {
    size_t entry = 0;   // index into buckets.entries()
    int64_t begin = 0;  // first element within the parameter
    int64_t numel = 0;
    int64_t shard_at = 0;  // where it lies in this rank's shard
    Tensor view;           // (numel) f32, the parameter's elements (shares its storage)
  };
  GradBuckets& buckets_;
  std::vector<Piece> pieces_;
  std::unique_ptr<AdamW> inner_;
  Tensor param_shard_;  // (S) f32
  Tensor param_full_;   // (W S) f32
};

}  // namespace ssmtrain
