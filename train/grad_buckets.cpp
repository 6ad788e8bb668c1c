#include "train/grad_buckets.h"

#include <algorithm>

#include "core/backend.h"
#include "core/ops.h"

namespace ssmtrain {

GradBuckets::GradBuckets(Dist& dist, std::vector<ParamSpec> params, double bucket_mb, DType comm_dtype, bool sharded)
    : dist_(dist), comm_dtype_(comm_dtype), sharded_(sharded) {
  SSMT_CHECK(bucket_mb > 0, "dist.bucket_mb must be > 0, got ", bucket_mb);
  SSMT_ASSERT(comm_dtype == DType::f32 || comm_dtype == DType::bf16, "GradBuckets: comm dtype ",
              dtype_name(comm_dtype));
  SSMT_ASSERT(!params.empty(), "GradBuckets: no parameters");
  device_ = params.front().tensor.device();
  // Bucket size in elements: the budget is in f32 bytes whatever travels, so that the
  // buckets (and the overlap) do not change with grad_dtype.
  const int64_t bucket_elems = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1e6 / 4.0));
  for (ParamSpec& spec : params) {
    const Tensor& t = spec.tensor;
    SSMT_CHECK(t.dtype() == DType::f32 && t.is_contiguous() && t.is_leaf() && t.requires_grad(),
               "GradBuckets: parameter ", t.describe(), " must be a contiguous f32 leaf that requires grad");
    SSMT_CHECK(t.device() == device_, "GradBuckets: parameter ", t.describe(), " is not on ", device_.str(),
               " like the others");
    // A new bucket when this parameter would overflow the current one: a bucket holds at
    // most bucket_elems unless one parameter alone is larger (the embedding), which then
    // travels alone instead of holding back the smaller ones before it.
    const int64_t filled = buckets_.empty() ? 0 : buckets_.back().end - buckets_.back().begin;
    if (buckets_.empty() || (filled > 0 && filled + t.numel() > bucket_elems)) {
      Bucket b;
      b.begin = b.end = flat_size_;
      b.first = b.last = entries_.size();
      buckets_.push_back(b);
    }
    Entry e{spec, flat_size_, t.numel(), buckets_.size() - 1};
    flat_size_ += e.numel;
    buckets_.back().end = flat_size_;
    buckets_.back().last = entries_.size() + 1;
    SSMT_CHECK(entry_of_.emplace(t.impl()->autograd.get(), entries_.size()).second, "GradBuckets: parameter '",
               spec.name, "' is listed twice");
    entries_.push_back(std::move(e));
  }
  reported_.assign(entries_.size(), false);
  const int64_t world = dist_.world_size();
  shard_size_ = (flat_size_ + world - 1) / world;
  NoGradGuard no_grad;
  if (sharded_) shard_received_ = Tensor::zeros({shard_size_}, comm_dtype_, device_);
  const int64_t lo = shard_begin(), hi = lo + shard_size_;
  for (Bucket& b : buckets_) {
    b.buffer = Tensor::empty({b.end - b.begin}, comm_dtype_, device_);
    if (sharded_) {
      const int64_t from = std::clamp(b.begin, lo, hi), to = std::clamp(b.end, lo, hi);
      b.received_at = from - lo;
      b.received = shard_received_.narrow(0, b.received_at, to - from);
    }
  }
}

GradReadyFn GradBuckets::hook() {
  return [this](const AutogradMeta& leaf) { on_ready(leaf); };
}

void GradBuckets::on_ready(const AutogradMeta& leaf) {
  auto it = entry_of_.find(&leaf);
  if (it == entry_of_.end() || reported_[it->second]) return;  // a leaf that is not one of ours
  reported_[it->second] = true;
  Bucket& b = buckets_[entries_[it->second].bucket];
  ++b.ready;
  // Start every complete bucket at the head of the order.
  while (next_start_ < buckets_.size()) {
    Bucket& next = buckets_[next_start_];
    if (next.ready < next.last - next.first) break;
    start(next);
    ++started_in_backward_;
  }
  // MPI progresses nonblocking collectives only inside MPI calls: a test per report keeps
  // the started buckets moving while the backward computes.
  for (size_t i = 0; i < next_start_; ++i) buckets_[i].work.test();
}

void GradBuckets::start(Bucket& b) {
  SSMT_ASSERT(!b.started && &b == &buckets_[next_start_], "GradBuckets: buckets must start in order");
  NoGradGuard no_grad;
  Backend& be = backend(device_);
  for (size_t i = b.first; i < b.last; ++i) {
    const Entry& e = entries_[i];
    Tensor slot = b.buffer.narrow(0, e.offset - b.begin, e.numel);
    Tensor g = e.spec.tensor.grad();
    if (g.defined())
      be.copy(g, slot.view(e.spec.tensor.shape()));  // casts to the comm dtype
    else
      be.fill(slot, 0.0);  // an unused parameter (an idle expert) takes part with zeros
  }
  if (sharded_) {
    const int64_t world = dist_.world_size();
    std::vector<int64_t> counts(static_cast<size_t>(world));
    for (int64_t r = 0; r < world; ++r) {
      const int64_t lo = r * shard_size_, hi = lo + shard_size_;
      counts[static_cast<size_t>(r)] = std::max<int64_t>(0, std::min(b.end, hi) - std::max(b.begin, lo));
    }
    b.work = dist_.reduce_scatter_sum_async(b.buffer, counts, b.received);
  } else {
    b.work = dist_.all_reduce_sum_async(b.buffer);
  }
  b.started = true;
  ++next_start_;
}

void GradBuckets::finish() {
  while (next_start_ < buckets_.size()) start(buckets_[next_start_]);
  NoGradGuard no_grad;
  const double inv = 1.0 / static_cast<double>(dist_.world_size());
  for (Bucket& b : buckets_) b.work.wait();
  if (sharded_) {
    // The buckets' parts are views of shard_received_; past N it stays zero.
    shard_grad_ = mul(comm_dtype_ == DType::f32 ? shard_received_ : shard_received_.to(DType::f32), inv);
  } else {
    for (const Entry& e : entries_) {
      Tensor sum = buckets_[e.bucket].buffer.narrow(0, e.offset - buckets_[e.bucket].begin, e.numel);
      sum = sum.view(e.spec.tensor.shape());
      if (comm_dtype_ != DType::f32) sum = sum.to(DType::f32);
      Tensor p = e.spec.tensor;   // a handle sharing the parameter
      p.set_grad(mul(sum, inv));  // as Dist::average_gradients
    }
  }
  for (Bucket& b : buckets_) {
    b.ready = 0;
    b.started = false;
    b.work = CollectiveWork();
  }
  std::fill(reported_.begin(), reported_.end(), false);
  next_start_ = 0;
  last_started_in_backward_ = started_in_backward_;
  started_in_backward_ = 0;
}

}  // namespace ssmtrain
