// Data parallelism across processes: `mpirun -np W ssmtrain train ...`.
//
// Every rank builds the same model from the same seed (identical parameters without a
// broadcast), reads its own share of each batch (data/ shards by rank), and before each
// update the gradients are averaged over the ranks: with NCCL on the compute stream for
// CUDA tensors, with MPI for CPU tensors. Rank 0 alone writes logs, metrics and
// checkpoints; every rank can read a checkpoint to resume. A process started without
// mpirun is a world of one and never touches MPI.
#pragma once

#include <memory>
#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

class Dist {
 public:
  // The process-wide instance; initialises MPI on first use when the process was started
  // by an MPI launcher (and ssmtrain was built with MPI), otherwise a world of one.
  static Dist& get();

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this host
  bool is_main() const { return rank_ == 0; }
  bool active() const { return world_ > 1; }

  // Averages the gradients of `params` over all ranks in place. A parameter without a
  // gradient on this rank (an unused expert) takes part with zeros, so every rank runs
  // the same collectives. All tensors must be on one device.
  void average_gradients(const std::vector<Tensor>& params);
  double sum(double value);            // over ranks
  double max(double value);            // over ranks
  void barrier();

  // Releases NCCL and finalises MPI if they were started; main() calls it before exit.
  static void shutdown();

  ~Dist();

 private:
  Dist();
  struct Nccl;
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  bool mpi_ = false;
  std::unique_ptr<Nccl> nccl_;  // created on the first CUDA collective
};

}  // namespace ssmtrain
