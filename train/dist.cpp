#include "train/dist.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"
#include "core/profiler.h"

#if defined(SSMTRAIN_WITH_MPI)
#include <mpi.h>
#endif
#if defined(SSMTRAIN_WITH_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>

#include "core/cuda/cuda_check.cuh"
#endif

namespace ssmtrain {

namespace {

[[maybe_unused]] int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

#if defined(SSMTRAIN_WITH_MPI)
void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw InternalError(std::string(what) + " failed: " + std::string(msg, static_cast<size_t>(len)));
  }
}

// bf16 has no MPI datatype: it travels as 16-bit words and is summed by this operation,
// which rounds each partial sum to bf16 as NCCL's bf16 all-reduce does.
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const bf16*>(in);
  auto* b = static_cast<bf16*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = bf16(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

struct MpiKind {
  MPI_Datatype type;
  MPI_Op op;
};

MpiKind mpi_kind(DType dtype) {
  if (dtype == DType::f32) return {MPI_FLOAT, MPI_SUM};
  if (dtype == DType::f64) return {MPI_DOUBLE, MPI_SUM};
  SSMT_ASSERT(dtype == DType::bf16, "Dist: collectives take f32, f64 or bf16 buffers, got ", dtype_name(dtype));
  static MPI_Op op = [] {
    MPI_Op o;
    mpi_check(MPI_Op_create(&bf16_sum, /*commute=*/1, &o), "MPI_Op_create (bf16 sum)");
    return o;
  }();
  return {MPI_UINT16_T, op};
}

int mpi_count(int64_t n) {
  SSMT_ASSERT(n >= 0 && n <= std::numeric_limits<int>::max(), "Dist: ", n, " elements exceed an MPI count");
  return static_cast<int>(n);
}
#endif

#if defined(SSMTRAIN_WITH_NCCL)
#define NCCL_CHECK(call)                                                                                          \
  do {                                                                                                            \
    ncclResult_t r_ = (call);                                                                                     \
    if (r_ != ncclSuccess)                                                                                        \
      throw InternalError(std::string(#call) + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) + ": " + \
                          ncclGetErrorString(r_));                                                                \
  } while (0)

ncclDataType_t nccl_type(DType dtype) {
  if (dtype == DType::f32) return ncclFloat;
  if (dtype == DType::f64) return ncclFloat64;
  SSMT_ASSERT(dtype == DType::bf16, "Dist: collectives take f32, f64 or bf16 buffers, got ", dtype_name(dtype));
  return ncclBfloat16;
}
#endif

void check_flat(const Tensor& t, const char* what) {
  SSMT_ASSERT(t.defined() && t.dim() == 1 && t.is_contiguous(), "Dist: ", what,
              " must be a contiguous 1-D tensor, got ", t.describe());
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct CollectiveWork::State {
  const char* what = "";
  bool done = false;
  int64_t launched_ns = 0;
  std::vector<Tensor> keep;  // the buffers, alive until the collective is done
#if defined(SSMTRAIN_WITH_MPI)
  MPI_Request request = MPI_REQUEST_NULL;
  std::vector<int> mpi_counts;  // the receive counts of a reduce-scatter
#endif
#if defined(SSMTRAIN_WITH_NCCL)
  cudaEvent_t event = nullptr;  // recorded on the communication stream after the collective
  int device = -1;
  ~State() {
    if (event) cudaEventDestroy(event);
  }
#endif
};

// The watchdog thread (see dist.h). It reads only atomics and CUDA events and makes no MPI
// call, so MPI needs no thread support.
struct DistWatchdog {
  std::atomic<int64_t> wait_since_ns{0};  // 0: the host is not waiting for a collective
  std::atomic<const char*> waiting_for{""};
  std::mutex mutex;
  std::condition_variable wake;
  bool stop = false;
  std::vector<std::shared_ptr<CollectiveWork::State>> device_work;  // NCCL collectives in flight
  std::atomic<void*> nccl_comm{nullptr};
  double timeout_s = 600;
  int rank = 0, world = 1;
  std::thread thread;

  [[noreturn]] void fail(const char* what, double waited_s, const std::string& detail = "") {
    std::fprintf(stderr,
                 "ssmtrain: rank %d of %d: %s did not complete within dist.timeout_s = %g s (waited %.1f s)%s; "
                 "another rank has probably died or hangs. Ending this rank with exit code %d; the last "
                 "checkpoint stays valid (continue with --resume auto).\n",
                 rank, world, what, timeout_s, waited_s, detail.c_str(), kExitDistTimeout);
    std::fflush(stderr);
#if defined(SSMTRAIN_WITH_NCCL)
    // Aborting frees the device of collectives that would never finish.
    if (void* comm = nccl_comm.load()) ncclCommAbort(static_cast<ncclComm_t>(comm));
#endif
    std::_Exit(kExitDistTimeout);
  }

  void run() {
    std::unique_lock<std::mutex> lock(mutex);
    while (!stop) {
      wake.wait_for(lock, std::chrono::milliseconds(100));
      if (stop) break;
      const int64_t now = now_ns();
      const int64_t limit = static_cast<int64_t>(timeout_s * 1e9);
      const int64_t since = wait_since_ns.load();
      if (since != 0 && now - since > limit) fail(waiting_for.load(), (now - since) * 1e-9);
#if defined(SSMTRAIN_WITH_NCCL)
      if (void* comm = nccl_comm.load()) {
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(static_cast<ncclComm_t>(comm), &async) == ncclSuccess && async != ncclSuccess &&
            async != ncclInProgress)
          fail("a NCCL collective", 0.0, std::string(" (NCCL reports: ") + ncclGetErrorString(async) + ")");
      }
      std::vector<std::shared_ptr<CollectiveWork::State>> running;
      for (auto& w : device_work) {
        if (cudaEventQuery(w->event) == cudaErrorNotReady) {
          if (now - w->launched_ns > limit) fail(w->what, (now - w->launched_ns) * 1e-9, " on the device");
          running.push_back(w);
        }
      }
      device_work.swap(running);
#endif
    }
  }
};

namespace {

Dist* g_instance = nullptr;
DistWatchdog* g_watchdog = nullptr;  // while its thread runs

// Marks the host as waiting for a collective for the watchdog.
class WaitScope {
 public:
  explicit WaitScope(const char* what) : dog_(g_watchdog) {
    if (!dog_) return;
    dog_->waiting_for.store(what);
    dog_->wait_since_ns.store(now_ns());
  }
  ~WaitScope() {
    if (dog_) dog_->wait_since_ns.store(0);
  }
  WaitScope(const WaitScope&) = delete;
  WaitScope& operator=(const WaitScope&) = delete;

 private:
  DistWatchdog* dog_;
};

}  // namespace

void CollectiveWork::wait() {
  if (!state_ || state_->done) return;
#if defined(SSMTRAIN_WITH_NCCL)
  if (state_->event) {
    CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(cuda::compute_stream(state_->device)), state_->event, 0));
    state_->done = true;
    return;
  }
#endif
#if defined(SSMTRAIN_WITH_MPI)
  if (state_->request != MPI_REQUEST_NULL) {
    WaitScope scope(state_->what);
    mpi_check(MPI_Wait(&state_->request, MPI_STATUS_IGNORE), state_->what);
  }
#endif
  state_->done = true;
  state_->keep.clear();
}

bool CollectiveWork::test() {
  if (!state_ || state_->done) return true;
#if defined(SSMTRAIN_WITH_NCCL)
  if (state_->event) return cudaEventQuery(state_->event) == cudaSuccess;
#endif
#if defined(SSMTRAIN_WITH_MPI)
  if (state_->request != MPI_REQUEST_NULL) {
    int flag = 0;
    mpi_check(MPI_Test(&state_->request, &flag, MPI_STATUS_IGNORE), state_->what);
    if (!flag) return false;
  }
#endif
  state_->done = true;
  state_->keep.clear();
  return true;
}

struct Dist::Nccl {
#if defined(SSMTRAIN_WITH_NCCL)
  ncclComm_t comm = nullptr;
  int device = -1;
  cudaStream_t stream = nullptr;  // the communication stream
  cudaEvent_t queued = nullptr;   // "the compute stream's work so far", for the stream to wait on
  ~Nccl() {
    if (comm) ncclCommDestroy(comm);
    if (queued) cudaEventDestroy(queued);
    if (stream) cudaStreamDestroy(stream);
  }
#endif
};

Dist& Dist::get() {
  static Dist instance;
  g_instance = &instance;
  return instance;
}

void Dist::shutdown() {
  if (!g_instance) return;
  DistWatchdog* dog = g_instance->watchdog_.get();
  {
    // Teardown waits for the other ranks too (NCCL's destroy, MPI_Finalize): still watched.
    WaitScope scope("the end of the run (NCCL and MPI teardown)");
    if (dog) dog->nccl_comm.store(nullptr);  // never abort a destroyed communicator
    g_instance->nccl_.reset();
#if defined(SSMTRAIN_WITH_MPI)
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (g_instance->mpi_ && !finalized) MPI_Finalize();
#endif
  }
  if (dog) {
    {
      std::lock_guard<std::mutex> lock(dog->mutex);
      dog->stop = true;
    }
    dog->wake.notify_all();
    if (dog->thread.joinable()) dog->thread.join();
    g_watchdog = nullptr;
    dog->device_work.clear();  // their CUDA events go while the runtime is up
  }
}

Dist::Dist() {
  if (!launched_by_mpi()) return;
#if defined(SSMTRAIN_WITH_MPI)
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) mpi_check(MPI_Init(nullptr, nullptr), "MPI_Init");
  mpi_ = true;
  // Errors come back as return codes (mpi_check turns them into exceptions with MPI's text)
  // instead of MPI's default of aborting inside the library.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_);
  const char* loopback = std::getenv("SSMTRAIN_DIST_LOOPBACK");
  loopback_ = world_ == 1 && loopback && std::string(loopback) == "1";
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_free(&local);
#else
  local_rank_ = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
  if (env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", 1)) > 1)
    throw UserError(
        "this ssmtrain was built without MPI (SSMTRAIN_MPI=OFF or no MPI found), so it cannot run "
        "under mpirun; rebuild with libopenmpi-dev installed");
#endif
}

Dist::~Dist() {
  if (g_instance == this) shutdown();
}

void Dist::set_timeout(double seconds) {
  SSMT_CHECK(seconds > 0, "dist.timeout_s must be > 0, got ", seconds);
  timeout_s_ = seconds;
  if (watchdog_) {
    std::lock_guard<std::mutex> lock(watchdog_->mutex);
    watchdog_->timeout_s = seconds;
  }
}

void Dist::start_watchdog() {
  if (watchdog_ || !active()) return;
  watchdog_ = std::make_unique<DistWatchdog>();
  watchdog_->timeout_s = timeout_s_;
  watchdog_->rank = rank_;
  watchdog_->world = world_;
  g_watchdog = watchdog_.get();
  watchdog_->thread = std::thread([dog = watchdog_.get()] { dog->run(); });
}

Dist::Nccl& Dist::nccl(Device device) {
#if defined(SSMTRAIN_WITH_NCCL)
  if (!nccl_) {
    auto n = std::make_unique<Nccl>();
    ncclUniqueId id;
    if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    {
      WaitScope scope("MPI_Bcast of the NCCL id");
      mpi_check(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast of the NCCL id");
    }
    CUDA_CHECK(cudaSetDevice(device.index));
    {
      WaitScope scope("ncclCommInitRank");
      NCCL_CHECK(ncclCommInitRank(&n->comm, world_, id, rank_));
    }
    n->device = device.index;
    CUDA_CHECK(cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&n->queued, cudaEventDisableTiming));
    nccl_ = std::move(n);
    if (watchdog_) watchdog_->nccl_comm.store(nccl_->comm);
  }
  SSMT_CHECK(nccl_->device == device.index, "Dist: collectives moved from cuda:", nccl_->device, " to ", device.str());
  return *nccl_;
#else
  (void)device;
  throw UserError("multi-process training on CUDA needs NCCL; this ssmtrain was built without it");
#endif
}

void Dist::average_gradients(const std::vector<Tensor>& params) {
  if (!active()) return;
  start_watchdog();
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  grads.reserve(params.size());
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) g = Tensor::zeros(p.shape(), p.dtype(), p.device());
    if (!g.is_contiguous()) g = g.contiguous();
    SSMT_ASSERT(g.dtype() == DType::f32, "Dist: gradients are expected in f32, got ", g.describe());
    grads.push_back(g);
  }
  const double inv = 1.0 / static_cast<double>(world_);
  if (params.empty()) return;
  const Device device = params.front().device();
  if (device.is_cpu()) {
#if defined(SSMTRAIN_WITH_MPI)
    WaitScope scope("MPI_Allreduce of the gradients");
    for (Tensor& g : grads)
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, g.data<float>(), mpi_count(g.numel()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce of the gradients");
#endif
  } else {
#if defined(SSMTRAIN_WITH_NCCL)
    Nccl& n = nccl(device);
    auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device.index));
    NCCL_CHECK(ncclGroupStart());
    for (Tensor& g : grads)
      NCCL_CHECK(ncclAllReduce(g.data<float>(), g.data<float>(), static_cast<size_t>(g.numel()), ncclFloat, ncclSum,
                               n.comm, stream));
    NCCL_CHECK(ncclGroupEnd());
    // The watchdog follows these collectives on the device too.
    auto st = std::make_shared<CollectiveWork::State>();
    st->what = "ncclAllReduce of the gradients";
    st->launched_ns = now_ns();
    st->device = device.index;
    CUDA_CHECK(cudaEventCreateWithFlags(&st->event, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(st->event, stream));
    if (watchdog_) {
      std::lock_guard<std::mutex> lock(watchdog_->mutex);
      watchdog_->device_work.push_back(st);
    }
#else
    throw UserError("multi-process training on CUDA needs NCCL; this ssmtrain was built without it");
#endif
  }
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor p = params[i];  // a handle sharing the parameter
    p.set_grad(mul(grads[i], inv));
  }
}

CollectiveWork Dist::launch(Device device, const char* what, std::vector<Tensor> keep, const MpiStart& mpi,
                            const NcclStart& nccl_calls) {
  start_watchdog();
  auto st = std::make_shared<CollectiveWork::State>();
  st->what = what;
  st->launched_ns = now_ns();
  st->keep = std::move(keep);
  if (device.is_cpu()) {
    mpi(*st);
  } else {
#if defined(SSMTRAIN_WITH_NCCL)
    Nccl& n = nccl(device);
    // The communication stream starts after the compute stream's work so far (the packed
    // bucket, the updated shard); the collective's event is what the compute stream and
    // the watchdog wait on. Collectives on the one communication stream run in launch
    // order, so the last bucket's event implies all earlier ones.
    auto compute = static_cast<cudaStream_t>(cuda::compute_stream(device.index));
    CUDA_CHECK(cudaEventRecord(n.queued, compute));
    CUDA_CHECK(cudaStreamWaitEvent(n.stream, n.queued, 0));
    {
      StreamSpan span(what, n.stream);
      nccl_calls(n.comm, n.stream);
    }
    st->device = device.index;
    CUDA_CHECK(cudaEventCreateWithFlags(&st->event, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(st->event, n.stream));
    if (watchdog_) {
      std::lock_guard<std::mutex> lock(watchdog_->mutex);
      watchdog_->device_work.push_back(st);
    }
#else
    (void)nccl_calls;
    nccl(device);  // throws: built without NCCL
#endif
  }
  CollectiveWork w;
  w.state_ = std::move(st);
  return w;
}

CollectiveWork Dist::all_reduce_sum_async(const Tensor& buf) {
  check_flat(buf, "all_reduce_sum_async: buf");
  if (!active()) return CollectiveWork();  // a world of one: the sum is the buffer itself
  return launch(
      buf.device(), "the all-reduce of a gradient bucket", {buf},
      [&](CollectiveWork::State& st) {
#if defined(SSMTRAIN_WITH_MPI)
        MpiKind k = mpi_kind(buf.dtype());
        mpi_check(MPI_Iallreduce(MPI_IN_PLACE, buf.data_ptr(), mpi_count(buf.numel()), k.type, k.op, MPI_COMM_WORLD,
                                 &st.request),
                  "MPI_Iallreduce of a gradient bucket");
#else
        (void)st;
#endif
      },
      [&](void* comm, void* stream) {
#if defined(SSMTRAIN_WITH_NCCL)
        NCCL_CHECK(ncclAllReduce(buf.data_ptr(), buf.data_ptr(), static_cast<size_t>(buf.numel()),
                                 nccl_type(buf.dtype()), ncclSum, static_cast<ncclComm_t>(comm),
                                 static_cast<cudaStream_t>(stream)));
#else
        (void)comm, (void)stream;
#endif
      });
}

CollectiveWork Dist::reduce_scatter_sum_async(const Tensor& buf, const std::vector<int64_t>& counts,
                                              const Tensor& out) {
  check_flat(buf, "reduce_scatter_sum_async: buf");
  check_flat(out, "reduce_scatter_sum_async: out");
  SSMT_ASSERT(static_cast<int>(counts.size()) == world_, "Dist: ", counts.size(), " counts for ", world_, " ranks");
  std::vector<int64_t> starts(counts.size() + 1, 0);
  for (size_t r = 0; r < counts.size(); ++r) starts[r + 1] = starts[r] + counts[r];
  SSMT_ASSERT(starts.back() == buf.numel() && out.numel() == counts[static_cast<size_t>(rank_)] &&
                  out.dtype() == buf.dtype() && out.device() == buf.device(),
              "Dist: reduce-scatter of ", buf.describe(), " into ", out.describe(), " does not fit the counts");
  if (!active()) {  // a world of one receives the whole buffer
    if (out.numel() > 0) backend(out.device()).copy(buf, out);
    return CollectiveWork();
  }
  return launch(
      buf.device(), "the reduce-scatter of a gradient bucket", {buf, out},
      [&](CollectiveWork::State& st) {
#if defined(SSMTRAIN_WITH_MPI)
        MpiKind k = mpi_kind(buf.dtype());
        // MPI may read the counts until the operation completes: they live in its state.
        for (int64_t c : counts) st.mpi_counts.push_back(mpi_count(c));
        mpi_check(MPI_Ireduce_scatter(buf.data_ptr(), out.data_ptr(), st.mpi_counts.data(), k.type, k.op,
                                      MPI_COMM_WORLD, &st.request),
                  "MPI_Ireduce_scatter of a gradient bucket");
#else
        (void)st;
#endif
      },
      [&](void* comm, void* stream) {
#if defined(SSMTRAIN_WITH_NCCL)
        // NCCL's reduce-scatter takes equal parts only: one reduce per owning rank, grouped.
        const size_t esize = dtype_size(buf.dtype());
        NCCL_CHECK(ncclGroupStart());
        for (int r = 0; r < world_; ++r) {
          const auto ru = static_cast<size_t>(r);
          if (counts[ru] == 0) continue;
          auto* src = static_cast<char*>(buf.data_ptr()) + static_cast<size_t>(starts[ru]) * esize;
          void* dst = r == rank_ ? out.data_ptr() : src;  // only the root's receive buffer is written
          NCCL_CHECK(ncclReduce(src, dst, static_cast<size_t>(counts[ru]), nccl_type(buf.dtype()), ncclSum, r,
                                static_cast<ncclComm_t>(comm), static_cast<cudaStream_t>(stream)));
        }
        NCCL_CHECK(ncclGroupEnd());
#else
        (void)comm, (void)stream;
#endif
      });
}

CollectiveWork Dist::all_gather_async(const Tensor& shard, const Tensor& full) {
  check_flat(shard, "all_gather_async: shard");
  check_flat(full, "all_gather_async: full");
  SSMT_ASSERT(
      full.numel() == shard.numel() * world_ && full.dtype() == shard.dtype() && full.device() == shard.device(),
      "Dist: all-gather of ", shard.describe(), " into ", full.describe(), " does not fit ", world_, " ranks");
  if (!active()) {
    if (shard.numel() > 0) backend(full.device()).copy(shard, full);
    return CollectiveWork();
  }
  return launch(
      shard.device(), "the all-gather of the parameters", {shard, full},
      [&](CollectiveWork::State& st) {
#if defined(SSMTRAIN_WITH_MPI)
        MpiKind k = mpi_kind(shard.dtype());
        mpi_check(MPI_Iallgather(shard.data_ptr(), mpi_count(shard.numel()), k.type, full.data_ptr(),
                                 mpi_count(shard.numel()), k.type, MPI_COMM_WORLD, &st.request),
                  "MPI_Iallgather of the parameters");
#else
        (void)st;
#endif
      },
      [&](void* comm, void* stream) {
#if defined(SSMTRAIN_WITH_NCCL)
        NCCL_CHECK(ncclAllGather(shard.data_ptr(), full.data_ptr(), static_cast<size_t>(shard.numel()),
                                 nccl_type(shard.dtype()), static_cast<ncclComm_t>(comm),
                                 static_cast<cudaStream_t>(stream)));
#else
        (void)comm, (void)stream;
#endif
      });
}

double Dist::max(double value) {
#if defined(SSMTRAIN_WITH_MPI)
  if (active()) {
    start_watchdog();
    WaitScope scope("an MPI_Allreduce (max) of the ranks' flags");
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  }
#endif
  return value;
}

void Dist::max(std::vector<double>& values) {
#if defined(SSMTRAIN_WITH_MPI)
  if (active() && !values.empty()) {
    start_watchdog();
    WaitScope scope("an MPI_Allreduce (max) of a vector");
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, values.data(), mpi_count(static_cast<int64_t>(values.size())), MPI_DOUBLE,
                            MPI_MAX, MPI_COMM_WORLD),
              "MPI_Allreduce");
  }
#else
  (void)values;
#endif
}

void Dist::barrier() {
#if defined(SSMTRAIN_WITH_MPI)
  if (active()) {
    start_watchdog();
    WaitScope scope("an MPI_Barrier");
    mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }
#endif
}

}  // namespace ssmtrain
