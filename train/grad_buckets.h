// Gradient buckets: data parallelism whose communication overlaps the backward.
//
// The parameters, in reverse registration order (the order in which the backward finishes
// them), are laid end to end in one flat index space and cut into buckets of about
// dist.bucket_mb of f32 gradients. During the last micro-batch's backward the autograd
// engine reports each parameter whose gradient is complete (core/autograd.h GradReadyFn);
// once a bucket's parameters are all in, its gradients are packed into the bucket's flat
// buffer (cast to dist.grad_dtype) and its collective starts while the backward goes on.
// Buckets start strictly in order, so every rank issues the same collectives in the same
// order even where ranks finish parameters in different orders (an MoE expert that one
// rank's tokens never reach is only finished at the end). finish() starts what is left
// (a parameter without a gradient takes part with zeros), waits, and writes the average.
//
// Two forms of the result:
//  - replicated (dist.zero 0): an all-reduce per bucket; each parameter's .grad becomes
//    mul(sum, 1 / W), the very operation of Dist::average_gradients, so with f32
//    communication the two paths agree bitwise wherever MPI sums in the same order (always
//    for two ranks; a world of one copies and multiplies by 1).
//  - sharded (dist.zero 1, train/zero.h): a reduce-scatter per bucket; rank r receives the
//    averaged gradient of its shard [r S, (r + 1) S) of the flat index space, S =
//    ceil(N / W), into shard_grad(); parameters' .grad are left alone.
//
// On CUDA, packing runs on the compute stream and the collectives on Dist's communication
// stream; finish() only makes the compute stream wait for them.
#pragma once

#include <unordered_map>
#include <vector>

#include "core/autograd.h"
#include "optim/param_groups.h"
#include "train/dist.h"

namespace ssmtrain {

class GradBuckets {
 public:
  // `params` in the order to bucket them (the trainer passes reverse registration order),
  // each a contiguous f32 leaf on one device. comm_dtype: f32 or bf16.
  GradBuckets(Dist& dist, std::vector<ParamSpec> params, double bucket_mb, DType comm_dtype, bool sharded);

  // A parameter's place in the flat index space.
  struct Entry {
    ParamSpec spec;
    int64_t offset = 0;  // first flat index
    int64_t numel = 0;
    size_t bucket = 0;
  };
  const std::vector<Entry>& entries() const { return entries_; }
  size_t bucket_count() const { return buckets_.size(); }
  int64_t flat_size() const { return flat_size_; }    // N
  int64_t shard_size() const { return shard_size_; }  // S = ceil(N / W)
  int64_t shard_begin() const { return shard_size_ * dist_.rank(); }
  bool sharded() const { return sharded_; }
  Dist& dist() const { return dist_; }

  // The hook for the backward of the step's last micro-batch (earlier ones only accumulate).
  GradReadyFn hook();
  // Buckets the hook started during the backward of the last finished step (the overlap).
  size_t started_in_backward() const { return last_started_in_backward_; }
  // Starts the remaining buckets, waits for all and writes the averaged gradient: into
  // each parameter's .grad (replicated) or into shard_grad() (sharded).
  void finish();
  // (S) f32: this rank's averaged gradient slice of the flat index space (sharded only),
  // zero past N.
  const Tensor& shard_grad() const { return shard_grad_; }

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;  // flat range
    size_t first = 0, last = 0;  // entries [first, last)
    size_t ready = 0;            // entries reported by the hook
    Tensor buffer;               // (end - begin) in the comm dtype
    Tensor received;             // sharded: this rank's part, (its count) in the comm dtype
    int64_t received_at = 0;     // sharded: where that part begins in the shard
    CollectiveWork work;
    bool started = false;
  };
  void on_ready(const AutogradMeta& leaf);
  void start(Bucket& bucket);

  Dist& dist_;
  DType comm_dtype_;
  bool sharded_;
  Device device_;
  std::vector<Entry> entries_;
  std::vector<Bucket> buckets_;
  std::unordered_map<const AutogradMeta*, size_t> entry_of_;
  std::vector<bool> reported_;
  size_t next_start_ = 0;  // buckets start in order
  size_t started_in_backward_ = 0, last_started_in_backward_ = 0;
  int64_t flat_size_ = 0, shard_size_ = 0;
  Tensor shard_received_;  // sharded: (S) in the comm dtype, the buckets' parts end to end
  Tensor shard_grad_;
};

}  // namespace ssmtrain
