#include "train/dist.h"

#include <cstdlib>
#include <cstring>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"

#if defined(SSMTRAIN_WITH_MPI)
#include <mpi.h>
#endif
#if defined(SSMTRAIN_WITH_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>
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
#endif

#if defined(SSMTRAIN_WITH_NCCL)
#define NCCL_CHECK(call)                                                                               \
  do {                                                                                                 \
    ncclResult_t r_ = (call);                                                                          \
    if (r_ != ncclSuccess)                                                                             \
      throw InternalError(std::string(#call) + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) + \
                          ": " + ncclGetErrorString(r_));                                              \
  } while (0)
#endif

}  // namespace

struct Dist::Nccl {
#if defined(SSMTRAIN_WITH_NCCL)
  ncclComm_t comm = nullptr;
  int device = -1;
  ~Nccl() {
    if (comm) ncclCommDestroy(comm);
  }
#endif
};

namespace {
Dist* g_instance = nullptr;
}

Dist& Dist::get() {
  static Dist instance;
  g_instance = &instance;
  return instance;
}

void Dist::shutdown() {
  if (!g_instance) return;
  g_instance->nccl_.reset();
#if defined(SSMTRAIN_WITH_MPI)
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_instance->mpi_ && !finalized) MPI_Finalize();
#endif
}

Dist::Dist() {
  if (!launched_by_mpi()) return;
#if defined(SSMTRAIN_WITH_MPI)
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) mpi_check(MPI_Init(nullptr, nullptr), "MPI_Init");
  mpi_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_free(&local);
#else
  local_rank_ = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
  if (env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", 1)) > 1)
    throw UserError("this ssmtrain was built without MPI (SSMTRAIN_MPI=OFF or no MPI found), so it cannot run "
                    "under mpirun; rebuild with libopenmpi-dev installed");
#endif
}

Dist::~Dist() {
  nccl_.reset();
#if defined(SSMTRAIN_WITH_MPI)
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (mpi_ && !finalized) MPI_Finalize();
#endif
}

void Dist::average_gradients(const std::vector<Tensor>& params) {
  if (!active()) return;
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
    for (Tensor& g : grads)
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, g.data<float>(), static_cast<int>(g.numel()), MPI_FLOAT, MPI_SUM,
                              MPI_COMM_WORLD),
                "MPI_Allreduce of the gradients");
#endif
  } else {
#if defined(SSMTRAIN_WITH_NCCL)
    if (!nccl_) {
      nccl_ = std::make_unique<Nccl>();
      ncclUniqueId id;
      if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
      mpi_check(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast of the NCCL id");
      cudaSetDevice(device.index);
      NCCL_CHECK(ncclCommInitRank(&nccl_->comm, world_, id, rank_));
      nccl_->device = device.index;
    }
    SSMT_CHECK(nccl_->device == device.index, "Dist: gradients moved from cuda:", nccl_->device, " to ",
               device.str());
    auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device.index));
    NCCL_CHECK(ncclGroupStart());
    for (Tensor& g : grads)
      NCCL_CHECK(ncclAllReduce(g.data<float>(), g.data<float>(), static_cast<size_t>(g.numel()), ncclFloat, ncclSum,
                               nccl_->comm, stream));
    NCCL_CHECK(ncclGroupEnd());
#else
    throw UserError("multi-process training on CUDA needs NCCL; this ssmtrain was built without it");
#endif
  }
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor p = params[i];  // a handle sharing the parameter
    p.set_grad(mul(grads[i], inv));
  }
}

double Dist::sum(double value) {
#if defined(SSMTRAIN_WITH_MPI)
  if (active()) mpi_check(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
  return value;
}

double Dist::max(double value) {
#if defined(SSMTRAIN_WITH_MPI)
  if (active()) mpi_check(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
  return value;
}

void Dist::barrier() {
#if defined(SSMTRAIN_WITH_MPI)
  if (active()) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

}  // namespace ssmtrain
