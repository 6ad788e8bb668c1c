// Bad input that used to crash or pass silently: each now a UserError (exit 2) naming what
// is wrong. A multi-document config, a directory or device as training text, a checkpoint
// with non-finite weights, and more threads than processors.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/random.h"
#include "data/text.h"
#include "nn/lm.h"
#include "temp_dir.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/setup.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

TEST_CASE("a config file with two YAML documents is refused") {
  const std::string msg =
      user_error_of([] { parse_config("data: {kind: synthetic}\n---\ntrain: {seed: 2}\n", "two.yaml"); });
  CHECK(contains(msg, "two.yaml"));
  CHECK(contains(msg, "2 YAML documents"));
  CHECK_NOTHROW(parse_config("---\ndata: {kind: synthetic}\n", "one.yaml"));  // one document, explicit start
}

TEST_CASE("training text must be regular files: a directory or a device is named") {
  testing::TempDir dir("bad_text");
  const std::string msg = user_error_of([&] { TextDataset({dir.str()}, WindowOrder::sequential, 1, 0, 1); });
  CHECK(contains(msg, dir.str()));
  CHECK(contains(msg, "is a directory"));
  if (std::filesystem::exists("/dev/zero")) {
    const std::string dev = user_error_of([] { TextDataset({"/dev/zero"}, WindowOrder::sequential, 1, 0, 1); });
    CHECK(contains(dev, "/dev/zero"));
    CHECK(contains(dev, "not a regular file"));
  }
}

TEST_CASE("a checkpoint whose weights are not finite is refused at load, naming the parameter") {
  testing::TempDir dir("nan_ckpt");
  Generator gen(3);
  LMConfig c;
  c.vocab_size = 16;
  c.d_model = 8;
  c.n_layer = 1;
  MixerFactory make = [&gen](int) -> std::shared_ptr<Mixer> { return std::make_shared<MLPMixer>(8, 16, gen); };
  LanguageModel model(c, make, gen);
  {
    NoGradGuard ng;
    Tensor w = model.norm_f()->weight();
    std::vector<float> v(static_cast<size_t>(w.numel()), 1.0f);
    v[3] = std::numeric_limits<float>::quiet_NaN();
    backend(w.device()).copy(Tensor::from_vector(v, w.shape()), w);
  }
  const std::string path = dir.str() + "/ckpt.h5";
  save_checkpoint(path, model, nullptr, TrainerState{}, "data: {kind: synthetic}\n");
  LanguageModel fresh(c, make, gen);
  CheckpointReader reader(path);
  reader.verify();  // the bytes are intact: only the values are bad
  const std::string msg = user_error_of([&] { load_model(reader, fresh); });
  CHECK(contains(msg, "norm_f.weight"));
  CHECK(contains(msg, "non-finite"));
}

TEST_CASE("train.threads beyond the processors is bounded by them") {
  Config c = parse_config("data: {kind: synthetic}\n", "t.yaml", {"train.threads=100000"});
  apply_compute_settings(c);
  CHECK(omp_get_max_threads() <= omp_get_num_procs());
  CHECK(omp_get_max_threads() >= 1);
  omp_set_num_threads(omp_get_num_procs());
}
