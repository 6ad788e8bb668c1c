// Optimizer: the part AdamW and SGD share — groups, the learning rate, per-parameter
// state, and its export/import by parameter name for checkpoints.
//
// State is created lazily on a parameter's first update, in f32 on the parameter's device,
// with its own step counter (a parameter that gets no gradient in a step, such as an
// unused expert, is skipped and its bias correction does not advance). Parameters must be
// contiguous f32 leaves (fp32 master weights, DESIGN "Mixed precision").
//
// step_clipped(clip) is the update of a step clipped with clip_grad_norm_deferred: on CUDA
// the clip factor and the skip decision stay on the device. AdamW applies both inside its
// kernel and so never waits; it counts the update in the host's step counters at once, as
// if it went ahead, and reads the skip flag back asynchronously. An update found skipped
// (normally when the next one is launched) has its counts taken back, so the bias
// corrections follow the same sequence as with the synchronous clip, where a skipped step
// does not count. While the host does not know yet, the next update's kernel picks between
// the two possible bias corrections by the previous skip flag on the device. Call
// resolve_pending() before reading the state (export_state, step_count).
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "core/async_read.h"
#include "optim/clip.h"
#include "optim/param_groups.h"

namespace ssmtrain {

// One exported state tensor: (parameter name, kind, value). Kinds: "step" (() i64 on the
// CPU), and the optimizer's buffer kinds ("exp_avg", "exp_avg_sq", "momentum_buffer").
struct StateTensor {
  std::string param_name;
  std::string kind;
  Tensor value;
};

class Optimizer {
 public:
  Optimizer(std::vector<ParamGroup> groups, double base_lr);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Updates every parameter that has a gradient. Call clip_grad_norm before, if wanted.
  virtual void step() = 0;
  // The update after clip_grad_norm_deferred: gradients scaled by the clip's factor, and
  // nothing changed when its skip flag is set. This default applies the factor on the
  // device, then reads the skip flag on the host (a wait on CUDA) and calls step(); AdamW
  // overrides it and never waits.
  virtual void step_clipped(const DeviceClip& clip);
  // Waits for the skip flags of earlier step_clipped updates and corrects the step counts
  // of those that were skipped. Afterwards the state is exact.
  void resolve_pending() { settle_pending(0); }
  // Updates whose skip flag the host has not read yet.
  size_t pending_updates() const { return pending_.size(); }
  virtual const char* type_name() const = 0;
  void zero_grad();

  // The schedule's learning rate for this step; each group runs at
  // group_peak_lr * lr / base_lr.
  void set_lr(double lr);
  double lr() const { return lr_; }
  double base_lr() const { return base_lr_; }
  double group_lr(size_t group) const;  // effective, at the current lr

  const std::vector<ParamGroup>& groups() const { return groups_; }
  std::vector<Tensor> parameters() const;
  // The largest step counter over all parameters (0 before the first update). No update
  // may be pending (resolve_pending()).
  int64_t step_count() const;

  // The live state tensors (sharing storage with the optimizer: copy them before the next
  // step if they must be kept), parameter by parameter in group order. No update may be
  // pending (resolve_pending()).
  std::vector<StateTensor> export_state() const;
  // Restores state exported by the same kind of optimizer. Every entry must name a
  // parameter of this optimizer with a known kind and the parameter's shape; a parameter
  // must get all its kinds or none (none: it starts fresh). Values are copied to the
  // parameter's device.
  void import_state(const std::vector<StateTensor>& state);

 protected:
  struct Slot {
    ParamSpec spec;
    size_t group = 0;
    int64_t step = 0;
    std::vector<Tensor> buffers;  // one per buffer_kinds(), empty until the first update
  };
  virtual std::vector<std::string> buffer_kinds() const = 0;
  // Creates zero buffers on the parameter's device when missing.
  void ensure_buffers(Slot& slot);
  // The gradient of a slot's parameter as a contiguous tensor checked against the
  // parameter; undefined when the parameter has no gradient.
  Tensor checked_grad(const Slot& slot) const;

  // An update launched with its skip flag still on the device. Its slots' step counts were
  // already advanced; a skip takes them back.
  struct PendingUpdate {
    Tensor clip_status;         // (kClipStatusSize) f64 on the device, read by the next launch
    AsyncRead status;           // its copy on the way to the host
    std::vector<size_t> slots;  // indices into slots_, ascending
    bool touches(size_t slot) const;
  };
  // Settles pending updates oldest first: those whose flag has arrived, then (waiting) the
  // oldest ones until at most `max_unsettled` remain.
  void settle_pending(size_t max_unsettled);

  std::vector<Slot> slots_;
  std::deque<PendingUpdate> pending_;

 private:
  std::vector<ParamGroup> groups_;
  double base_lr_;
  double lr_;
};

}  // namespace ssmtrain
