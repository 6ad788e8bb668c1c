// Data parallelism across processes: `mpirun -np W ssmtrain train ...`.
//
// Every rank builds the same model from the same seed (identical parameters without a
// broadcast), reads its own share of each batch (data/ shards by rank), and before each
// update the gradients are averaged over the ranks: with NCCL on the compute stream for
// CUDA tensors, with MPI for CPU tensors. Rank 0 alone writes logs, metrics and
// checkpoints; every rank can read a checkpoint to resume. A process started without
// mpirun is a world of one and never touches MPI.
//
// Loopback (for checking the communication path on one GPU or one CPU): a world of one
// started by `mpirun -np 1` with SSMTRAIN_DIST_LOOPBACK=1 in its environment runs every
// collective as a world of several would (MPI on the CPU, a NCCL communicator of one rank
// on CUDA, the communication stream, the watchdog), so its results must equal a plain run
// and its profile shows the communication stream beside the backward.
//
// Besides the per-parameter average (the simple path), Dist offers collectives on flat
// buffers for the bucketed path and ZeRO-1 (train/grad_buckets.h, train/zero.h): CPU
// buffers go through MPI's nonblocking collectives; CUDA buffers through NCCL on a
// communication stream that starts after the work queued on the compute stream so far,
// and whose completion the compute stream waits for (events), so the host never waits.
//
// Faults (dist.timeout_s): a watchdog thread ends the process with a message when the host
// has waited for a collective (or a NCCL collective has been running on the device) longer
// than the timeout, aborting the NCCL communicator first. A rank that dies or hangs thus
// never leaves the others hanging: they exit with kExitDistTimeout, and the launcher ends
// the job. MPI errors return to the caller (MPI_ERRORS_RETURN) and become exceptions.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ssmtrain {

struct DistWatchdog;  // train/dist.cpp

// The exit code of a rank ended by the watchdog.
inline constexpr int kExitDistTimeout = 3;

// A collective in flight (Dist's *_async). Waiting twice is a no-op.
class CollectiveWork {
 public:
  CollectiveWork() = default;
  bool defined() const { return state_ != nullptr; }
  // CPU: blocks until the collective is done (under the watchdog). CUDA: the compute
  // stream waits for it; the host goes on.
  void wait();
  // CPU: drives MPI's progress and tells whether it is done; CUDA: whether the device has
  // finished it. Never blocks.
  bool test();
  struct State;

 private:
  friend class Dist;
  std::shared_ptr<State> state_;
};

class Dist {
 public:
  // The process-wide instance; initialises MPI on first use when the process was started
  // by an MPI launcher (and ssmtrain was built with MPI), otherwise a world of one.
  static Dist& get();

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this host
  bool is_main() const { return rank_ == 0; }
  // Whether the ranks communicate: a world of several, or a loopback world of one.
  bool active() const { return world_ > 1 || loopback_; }

  // Averages the gradients of `params` over all ranks in place. A parameter without a
  // gradient on this rank (an unused expert) takes part with zeros, so every rank runs
  // the same collectives. All tensors must be on one device.
  void average_gradients(const std::vector<Tensor>& params);
  double max(double value);               // over ranks
  void max(std::vector<double>& values);  // elementwise over ranks, in place
  void barrier();

  // ---- flat-buffer collectives (every rank calls them in the same order) ----
  // `buf` (n) f32, f64 or bf16, contiguous, 1-D: summed over the ranks in place.
  CollectiveWork all_reduce_sum_async(const Tensor& buf);
  // `buf` (n), n = sum(counts) with counts[r] >= 0 for each rank: rank r receives the sum
  // over ranks of buf[sum(counts[:r]) : sum(counts[:r+1])] into `out` (counts[rank]), of
  // buf's dtype and device.
  CollectiveWork reduce_scatter_sum_async(const Tensor& buf, const std::vector<int64_t>& counts, const Tensor& out);
  // `full` (W * s) receives every rank's `shard` (s) in rank order; same dtype and device.
  CollectiveWork all_gather_async(const Tensor& shard, const Tensor& full);

  // dist.timeout_s; the watchdog starts with the first collective of a world of several.
  void set_timeout(double seconds);
  double timeout() const { return timeout_s_; }

  // Releases NCCL and finalises MPI if they were started; main() calls it before exit.
  static void shutdown();

  ~Dist();

 private:
  Dist();
  struct Nccl;
  Nccl& nccl(Device device);  // the communicator of `device`, created on first use
  // Starts a flat collective: `mpi` posts the nonblocking MPI call into the state's request
  // (CPU buffers); `nccl_calls` enqueues the NCCL calls (ncclComm_t, cudaStream_t) on the
  // communication stream (CUDA buffers). `keep`: buffers held until the collective is done.
  using MpiStart = std::function<void(CollectiveWork::State&)>;
  using NcclStart = std::function<void(void* comm, void* stream)>;
  CollectiveWork launch(Device device, const char* what, std::vector<Tensor> keep, const MpiStart& mpi,
                        const NcclStart& nccl_calls);
  void start_watchdog();
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  bool mpi_ = false;
  bool loopback_ = false;  // SSMTRAIN_DIST_LOOPBACK=1 under mpirun -np 1
  double timeout_s_ = 600.0;
  std::unique_ptr<Nccl> nccl_;  // created on the first CUDA collective
  std::unique_ptr<DistWatchdog> watchdog_;
};

}  // namespace ssmtrain
