// ssmtrain-bench train: whole training steps (forward through the fused head and loss,
// backward, gradient clipping, AdamW) of the model ladder users train, timed as a run sees
// them: train_step() from train/step.h, the same function the trainer calls, on random
// tokens drawn in process (uniform over the vocabulary, fresh every step).
//
// Rows: the Mamba ladder at PERF.md's shapes (24 x 768 = 129M and 48 x 1024 = 372M at
// B8 L2048, vocab 50277 padded to 50280, bf16 compute over f32 master weights, AdamW
// (0.9, 0.95), weight decay 0.1, clip 1.0), Mamba-2 at the same sizes, MoE-Mamba (8 and 32
// experts) at the 129M model's active size, the 12- and 1-layer rows of PERF.md, and every shipped config of
// configs/ at its own shape. Each row reports the median step time over the timed steps
// (steps run back to back as in training, each timed between end-of-step events on the
// device's timeline), tokens/s, the
// allocator's high-water mark and reserved bytes, MFU by the 6N rule against the bf16 GEMM
// rate measured on the card (PERF.md: 770 TFLOP/s on an H200), and the ratio to the official
// stack's figure where PERF.md has one.
//
// --quick: tiny shapes, on the CPU as well, so CI runs this code; --profile: after timing,
// record two more steps of each row with the profiler and print its table (and write
// profile_<row>.json beside the --json report, or in the working directory).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/profiler.h"
#include "core/storage.h"
#include "train/config.h"
#include "train/setup.h"
#include "train/step.h"

#if defined(SSMTRAIN_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace fs = std::filesystem;

namespace ssmtrain::bench {

namespace {

constexpr double kBf16PeakTflops = 770.0;  // PERF.md: cuBLAS bf16 8192^3 on the H200

struct TrainCase {
  std::string name;            // row name, matched by --only
  std::string yaml;            // the config (YAML text, or empty when `config_file` is set)
  std::string config_file;     // a shipped config
  std::vector<std::string> overrides;
  double official_tok_s = 0;   // PERF.md, 0 = none
  double official_gib = 0;     // PERF.md reserved memory, 0 = none
  double target_tok_s = 0;     // PERF.md target, 0 = none
};

std::string lm_yaml(const std::string& mixer, int64_t d_model, int64_t n_layer, int64_t vocab, int64_t batch,
                    int64_t seq_len, const std::string& device, const std::string& extra_model = "") {
  std::string y;
  y += "model:\n  mixer: " + mixer + "\n  d_model: " + std::to_string(d_model) + "\n  n_layer: " +
       std::to_string(n_layer) + "\n  vocab_size: " + std::to_string(vocab) + "\n";
  if (mixer == "mamba2" && extra_model.empty()) y += "  d_state: 128\n  headdim: 64\n  chunk_size: 256\n";
  y += extra_model;
  y += "data:\n  kind: synthetic\noptim:\n  name: adamw\n  lr: 6.0e-4\n  betas: [0.9, 0.95]\n"
       "  weight_decay: 0.1\n  grad_clip: 1.0\nbudget:\n  steps: 1000\n";
  y += "train:\n  device: " + device + "\n  precision: " + std::string(device == "cpu" ? "fp32" : "bf16") +
       "\n  batch_size: " + std::to_string(batch) + "\n  seq_len: " + std::to_string(seq_len) + "\n";
  return y;
}

std::vector<TrainCase> full_cases() {
  // MoE-Mamba at the 129M model's active size: 12 Mamba + 12 Switch blocks whose expert
  // (2 x 768 x 2304) matches a Mamba block, so a token touches as many parameters as in the
  // dense row; 8 and 32 experts (many experts as in the paper).
  auto moe = [](int experts) {
    return "  moe:\n    every: 2\n    experts: " + std::to_string(experts) +
           "\n    d_ff: 2304\n    capacity_factor: 1.25\n";
  };
  std::vector<TrainCase> c;
  c.push_back({"mamba 24x768 (129M)", lm_yaml("mamba", 768, 24, 50277, 8, 2048, "cuda"), "", {}, 153.9e3, 20.0,
               231e3});
  c.push_back({"mamba 48x1024 (372M)", lm_yaml("mamba", 1024, 48, 50277, 8, 2048, "cuda"), "", {}, 69.4e3, 30.1,
               104e3});
  c.push_back({"mamba2 24x768 (129M)", lm_yaml("mamba2", 768, 24, 50277, 8, 2048, "cuda"), "", {}, 135.2e3, 20.0,
               203e3});
  c.push_back({"mamba2 48x1024 (368M)", lm_yaml("mamba2", 1024, 48, 50277, 8, 2048, "cuda"), "", {}, 61.7e3, 33.3,
               93e3});
  c.push_back({"moe-mamba 24x768 8 experts (129M active)", lm_yaml("mamba", 768, 24, 50277, 8, 2048, "cuda", moe(8)),
               "", {}, 0, 0, 0});
  c.push_back({"moe-mamba 24x768 32 experts (129M active)",
               lm_yaml("mamba", 768, 24, 50277, 8, 2048, "cuda", moe(32)), "", {}, 0, 0, 0});
  // Activation recomputation: the memory it saves and the time it costs.
  c.push_back({"mamba 24x768 recompute=mixer", lm_yaml("mamba", 768, 24, 50277, 8, 2048, "cuda"), "",
               {"train.recompute=mixer"}, 153.9e3, 20.0, 0});
  c.push_back({"mamba 24x768 recompute=block", lm_yaml("mamba", 768, 24, 50277, 8, 2048, "cuda"), "",
               {"train.recompute=block"}, 153.9e3, 20.0, 0});
  c.push_back({"mamba 48x1024 recompute=block", lm_yaml("mamba", 1024, 48, 50277, 8, 2048, "cuda"), "",
               {"train.recompute=block"}, 69.4e3, 30.1, 0});
  // The long-convolution baselines (docs/h3_hyena.md) at the 129M Mamba's shape.
  c.push_back({"h3 24x768", lm_yaml("h3", 768, 24, 50277, 8, 2048, "cuda", "  d_state: 64\n"), "", {}, 0, 0, 0});
  c.push_back({"hyena 24x768", lm_yaml("hyena", 768, 24, 50277, 8, 2048, "cuda"), "", {}, 0, 0, 0});
  c.push_back({"mamba 12x768", lm_yaml("mamba", 768, 12, 50277, 8, 2048, "cuda"), "", {}, 282.7e3, 0, 0});
  c.push_back({"mamba 1x768", lm_yaml("mamba", 768, 1, 50277, 8, 2048, "cuda"), "", {}, 16384 / 22.4e-3, 0, 0});
  // The shipped configs at their own shapes (data replaced by random tokens of their vocabulary).
  for (const char* f : {"quickstart", "mamba_text", "mamba2_text", "moe_mamba_text", "selective_copy_mamba",
                        "selective_copy_s6", "selective_copy_s4", "induction_mamba", "h3_text", "hyena_text"})
    c.push_back({std::string("config ") + f, "", std::string("configs/") + f + ".yaml", {"train.device=cuda"}, 0, 0, 0});
  return c;
}

std::vector<TrainCase> quick_cases(bool cuda) {
  const std::string moe = "  moe:\n    every: 2\n    experts: 4\n    d_ff: 96\n";
  std::vector<std::string> devices{"cpu"};
  if (cuda) devices.push_back("cuda");
  std::vector<TrainCase> c;
  for (const auto& d : devices) {
    c.push_back({"quick mamba 2x64 " + d, lm_yaml("mamba", 64, 2, 256, 2, 64, d), "", {}, 0, 0, 0});
    c.push_back({"quick mamba2 2x64 " + d, lm_yaml("mamba2", 64, 2, 256, 2, 64, d, "  d_state: 16\n  headdim: 16\n  chunk_size: 16\n"), "", {}, 0, 0, 0});
    c.push_back({"quick mamba 2x64 recompute=block " + d, lm_yaml("mamba", 64, 2, 256, 2, 64, d), "",
                 {"train.recompute=block"}, 0, 0, 0});
    c.push_back({"quick moe-mamba 2x64 " + d, lm_yaml("mamba", 64, 2, 256, 2, 64, d, moe), "", {}, 0, 0, 0});
    c.push_back({"quick moe-mamba 2x64 top-2 dropless " + d, lm_yaml("mamba", 64, 2, 256, 2, 64, d, moe), "",
                 {"model.moe.top_k=2", "model.moe.capacity_factor=0"}, 0, 0, 0});
    c.push_back({"quick h3 2x64 " + d, lm_yaml("h3", 64, 2, 256, 2, 64, d, "  h3:\n    head_dim: 2\n"), "", {}, 0, 0, 0});
    c.push_back({"quick hyena 2x64 " + d, lm_yaml("hyena", 64, 2, 256, 2, 64, d), "", {}, 0, 0, 0});
  }
  return c;
}

// End-of-step marks: CUDA events on the compute stream (the device's timeline), or the host
// clock on the CPU.
class StepClock {
 public:
  explicit StepClock(Device device) : device_(device) {}
  ~StepClock() {
#if defined(SSMTRAIN_WITH_CUDA)
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
#endif
  }
  StepClock(const StepClock&) = delete;
  StepClock& operator=(const StepClock&) = delete;

  void mark() {
    if (device_.is_cuda()) {
#if defined(SSMTRAIN_WITH_CUDA)
      cudaEvent_t e;
      check(cudaEventCreate(&e));
      check(cudaEventRecord(e, static_cast<cudaStream_t>(cuda::compute_stream(device_.index))));
      events_.push_back(e);
#endif
    } else {
      host_.push_back(std::chrono::steady_clock::now());
    }
  }
  // Call after the device drained.
  std::vector<double> intervals_ms() const {
    std::vector<double> out;
#if defined(SSMTRAIN_WITH_CUDA)
    for (size_t i = 1; i < events_.size(); ++i) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]));
      out.push_back(ms);
    }
#endif
    for (size_t i = 1; i < host_.size(); ++i)
      out.push_back(std::chrono::duration<double, std::milli>(host_[i] - host_[i - 1]).count());
    return out;
  }

 private:
#if defined(SSMTRAIN_WITH_CUDA)
  static void check(cudaError_t e) {
    if (e != cudaSuccess) throw InternalError(std::string("train bench: ") + cudaGetErrorString(e));
  }
  std::vector<cudaEvent_t> events_;
#endif
  Device device_;
  std::vector<std::chrono::steady_clock::time_point> host_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::string file_safe(const std::string& name) {
  std::string s;
  for (char ch : name) s += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return s;
}

struct Measured {
  double step_ms = 0, tok_s = 0, peak_gib = 0, reserved_gib = 0, mfu = 0;
  int64_t params = 0, tokens = 0;
  double last_loss = 0;
};

Measured run_case(const TrainCase& tc, const Options& o, bool quick) {
  Config config = tc.config_file.empty() ? parse_config(tc.yaml, tc.name + ".yaml", tc.overrides)
                                         : load_config(tc.config_file, tc.overrides);
  apply_compute_settings(config);
  const Device device = train_device(config);
  if (device.is_cuda() && o.device != 0) throw UserError("--device: only device 0 is supported by the train family");
  const ModelSpec spec = model_spec(config);
  Generator init_gen(static_cast<uint64_t>(config.train.seed));
  auto model = build_language_model(spec, init_gen);
  if (!device.is_cpu()) model->to(device);
  auto optimizer = make_optimizer(config, *model);
  const std::vector<Tensor> params = optimizer->parameters();
  model->train();

  const int64_t B = config.train.batch_size, L = config.train.seq_len, vocab = config.model.vocab_size;
  std::mt19937_64 rng(1234);
  std::uniform_int_distribution<int64_t> token(0, vocab - 1);
  auto next_batch = [&]() -> std::pair<Tensor, Tensor> {
    std::vector<int64_t> ids(static_cast<size_t>(B * L)), targets(static_cast<size_t>(B * L));
    for (auto& t : ids) t = token(rng);
    for (auto& t : targets) t = token(rng);
    return {Tensor::from_vector<int64_t>(ids, {B, L}, device), Tensor::from_vector<int64_t>(targets, {B, L}, device)};
  };
  Dist& dist = Dist::get();
  auto launch_step = [&] {
    return train_step(*model, *optimizer, params, dist, next_batch, config.train.grad_accum, config.optim.grad_clip,
                      config.train.fused_head && !o.unfused_head);
  };
  auto one_step = [&] {  // a whole step, drained (warm-up and profiling)
    PendingStep pending = launch_step();
    backend(device).synchronize();
    return pending.resolve();
  };

  const int warmup = quick ? 1 : 3, reps = quick ? 2 : 10;
  for (int i = 0; i < warmup; ++i) one_step();
  reset_peak_memory(device);
  // Steady state, as the trainer runs it: steps back to back, each step's scalars read one
  // step late, the host free to run ahead. A step's time is the interval between the ends of
  // consecutive steps on the device's timeline (an event recorded after each step).
  StepClock clock(device);
  Measured m;
  clock.mark();
  std::optional<PendingStep> previous;
  for (int i = 0; i < reps; ++i) {
    PendingStep pending = launch_step();
    clock.mark();
    if (previous) m.last_loss = previous->resolve().loss;
    previous.emplace(std::move(pending));
  }
  backend(device).synchronize();
  m.last_loss = previous->resolve().loss;
  std::vector<double> times = clock.intervals_ms();
  MemoryStats mem = memory_stats(device);
  m.step_ms = median(times);
  m.tokens = B * L * config.train.grad_accum;
  m.tok_s = static_cast<double>(m.tokens) / (m.step_ms * 1e-3);
  m.peak_gib = static_cast<double>(mem.peak_in_use) / double(1 << 30);
  m.reserved_gib = static_cast<double>(mem.reserved) / double(1 << 30);
  // MFU by the 6N rule: N = active parameters (the tied head counted once, as a GEMM it
  // runs once per token like any other).
  auto counts = model->parameter_counts(moe_routing(spec).first, std::max(1, moe_routing(spec).second));
  m.params = counts.active;
  if (device.is_cuda())
    m.mfu = 6.0 * static_cast<double>(m.params) * m.tok_s / (kBf16PeakTflops * 1e12);

  if (o.profile) {
    profiler::start(device);
    for (int64_t s = 0; s < 2; ++s) {
      profiler::step_boundary(s);
      ProfileScope step("step");
      one_step();
    }
    profiler::stop();
    std::printf("\n-- profile: %s --\n%s\n", tc.name.c_str(), profiler::summary_table(2).c_str());
    fs::path dir = o.json_path.empty() ? fs::path(".") : fs::path(o.json_path).parent_path();
    if (dir.empty()) dir = ".";
    profiler::write_chrome_trace((dir / ("profile_" + file_safe(tc.name) + ".json")).string());
  }
  return m;
}

bool cuda_present() {
#if defined(SSMTRAIN_WITH_CUDA)
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

}  // namespace

std::vector<Row> run_train(const Options& o) {
  const bool cuda = cuda_present();
  std::vector<TrainCase> cases = o.quick ? quick_cases(cuda) : full_cases();
  if (!o.quick && !cuda) {
    std::printf("train: no CUDA device; the full rows need one (use --quick for the CPU rows)\n");
    return {};
  }
  std::printf("%-44s %10s %11s %9s %9s %6s %10s %8s\n", "train step", "ms", "tokens/s", "peak GiB", "resv GiB",
              "MFU", "vs offic.", "loss");
  std::vector<Row> rows;
  for (const TrainCase& tc : cases) {
    if (!o.only.empty() && tc.name.find(o.only) == std::string::npos) continue;
    Measured m;
    try {
      m = run_case(tc, o, o.quick);
    } catch (const UserError& e) {
      // A row that cannot run (out of memory, a config needing data) is reported, not fatal.
      // The tape of the failed step still holds its saved activations: drop them, and the
      // cached blocks, so the next row starts from an empty device.
      clear_tape();
      if (cuda) empty_cache(Device::cuda(0));
      std::printf("%-44s  skipped: %s\n", tc.name.c_str(), e.what());
      continue;
    }
    char ratio[32] = "-";
    if (tc.official_tok_s > 0) std::snprintf(ratio, sizeof ratio, "%.2fx", m.tok_s / tc.official_tok_s);
    std::printf("%-44s %10.2f %11.0f %9.2f %9.2f %5.1f%% %10s %8.4f\n", tc.name.c_str(), m.step_ms, m.tok_s,
                m.peak_gib, m.reserved_gib, 100 * m.mfu, ratio, m.last_loss);
    std::fflush(stdout);
    Row r{"train", tc.name, m.step_ms, {}};
    r.fields = {{"tokens_per_s", m.tok_s}, {"peak_gib", m.peak_gib}, {"reserved_gib", m.reserved_gib},
                {"mfu", m.mfu}, {"params_active", static_cast<double>(m.params)}, {"loss", m.last_loss}};
    if (tc.official_tok_s > 0) {
      r.fields.push_back({"official_tokens_per_s", tc.official_tok_s});
      r.fields.push_back({"speedup_vs_official", m.tok_s / tc.official_tok_s});
    }
    if (tc.official_gib > 0) r.fields.push_back({"official_reserved_gib", tc.official_gib});
    if (tc.target_tok_s > 0) r.fields.push_back({"target_tokens_per_s", tc.target_tok_s});
    rows.push_back(r);
    // Each row starts from an empty cache, so its reserved figure is its own.
    if (cuda) empty_cache(Device::cuda(0));
  }
  return rows;
}

}  // namespace ssmtrain::bench
