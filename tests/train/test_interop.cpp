// Weights in and out (train/interop.h) and the formats under them: the JSON reader/writer,
// safetensors files checked byte by byte, export -> import round trips that must give back
// every parameter bit for bit, and the refusals of input that has no counterpart. The
// comparison with transformers itself is tools/interop_check.py (needs PyTorch).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/random.h"
#include "ssm/mamba.h"
#include "ssm/mamba2.h"
#include "temp_dir.h"
#include "train/checkpoint.h"
#include "train/interop.h"
#include "train/json.h"
#include "train/safetensors.h"
#include "train/setup.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A small model of `yaml`'s model section with its drawn (random) parameters.
std::pair<Config, ParamArrays> small_model(const std::string& yaml) {
  Config config = parse_config(yaml + "data: {kind: synthetic}\n", "test.yaml");
  Generator gen(7);
  auto model = build_language_model(model_spec(config), gen);
  ParamArrays params;
  for (const auto& p : model->named_parameters()) params[p.name] = to_host_array(p.tensor);
  return {config, params};
}

}  // namespace

TEST_CASE("json: parses what transformers writes and writes what it reads back") {
  const Json v = parse_json(
      R"({"a": [1, -2.5e-3, true, null], "s": "q\"\\\u00e9\ud83d\ude00 NaN", "lim": [0.0, Infinity],
          "neg": -Infinity, "nan": NaN, "o": {}})",
      "x.json");
  CHECK(json_number(json_array(v["a"], "a")[1], "a") == -2.5e-3);
  CHECK(json_string(v["s"], "s") == "q\"\\\xc3\xa9\xf0\x9f\x98\x80 NaN");  // a literal inside a string stays text
  CHECK(std::isinf(json_number(v["lim"][1], "lim")));
  CHECK(json_number(v["neg"], "neg") < 0);
  CHECK(std::isinf(json_number(v["neg"], "neg")));
  CHECK(std::isnan(json_number(v["nan"], "nan")));
  CHECK(json_find(v, "o")->empty());
  CHECK(json_find(v, "missing") == nullptr);
  // Written in insertion order; integers without a fraction, 1e-5 as 1e-05.
  Json w = Json::object();
  w["n"] = 1e-5;
  w["k"] = 50280;
  w["t"] = "a\nb";
  CHECK(w.dump() == R"({"n":1e-05,"k":50280,"t":"a\nb"})");
  CHECK(parse_json(w.dump(2), "w").dump() == w.dump());
}

TEST_CASE("json: syntax errors name the file and the byte offset") {
  std::string msg = user_error_of([] { parse_json("{\"a\": 1,}", "config.json"); });
  CHECK(contains(msg, "config.json"));
  CHECK(contains(msg, "byte 8"));  // the '}' where a member name should be
  // Offsets count the original text, before the non-finite literals were rewritten.
  CHECK(contains(user_error_of([] { parse_json("[NaN, Infinity, x]", "n.json"); }), "byte 16"));
  msg = user_error_of([] { parse_json("{\"a\": 1, \"b\": {\"a\": 2, \"a\": 3}}", "dup.json"); });
  CHECK(contains(msg, "dup.json"));
  CHECK(contains(msg, "duplicate member name 'a'"));
  msg = user_error_of([] { parse_json("[1] 2", "t.json"); });
  CHECK(contains(msg, "expected end of input"));
  CHECK(contains(user_error_of([] { json_string(parse_json("{\"x\": 1}", "k")["x"], "config.json: key 'x'"); }),
                 "config.json: key 'x': expected a string, found a number"));
  CHECK(contains(user_error_of([] { json_int(parse_json("1.5", "k"), "k"); }), "expected an integer"));
}

TEST_CASE("safetensors: the file is the header length, the JSON header padded to 8, then the data") {
  testing::TempDir dir("safetensors");
  const std::string path = dir.str() + "/t.safetensors";
  SafeTensorMap t;
  t.emplace("a", SafeTensor::from_f32({1.0f, -2.0f}, {2}));
  write_safetensors(path, t);
  const std::string bytes = read_bytes(path);
  // Written out by hand: {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} is 54
  // bytes, padded with 2 spaces to 56 = 0x38; then 1.0f and -2.0f little-endian.
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 54);
  std::string expected("\x38\0\0\0\0\0\0\0", 8);
  expected += header + "  ";
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
  CHECK(bytes == expected);

  // A header that needs padding: spaces up to the next multiple of 8.
  SafeTensorMap u;
  u.emplace("bb", SafeTensor::from_f32({3.0f}, {1, 1}));
  write_safetensors(path, u, {{"format", "pt"}});
  const std::string b2 = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, b2.data(), 8);
  CHECK(n % 8 == 0);
  CHECK(b2.size() == 8 + n + 4);
  const std::string h2 = b2.substr(8, n);
  CHECK(h2.find_last_not_of(' ') + 1 > n - 8);  // at most 7 spaces after the closing brace
  CHECK(h2[h2.find_last_not_of(' ')] == '}');
  std::map<std::string, std::string> meta;
  SafeTensorMap back = read_safetensors(path, &meta);
  CHECK(meta.at("format") == "pt");
  CHECK(back.at("bb").shape == std::vector<int64_t>{1, 1});
  CHECK(back.at("bb").to_f32("bb") == std::vector<float>{3.0f});
}

TEST_CASE("safetensors: F16 and BF16 widen to f32 exactly") {
  // 1.0, -2.0, 65504 (largest half), 2^-24 (smallest subnormal half), 2^-14 (smallest normal).
  const uint16_t half[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x0400};
  SafeTensor h{
      "F16",
      {5},
      std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(half), reinterpret_cast<const uint8_t*>(half) + 10)};
  CHECK(h.to_f32("h") == std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), std::ldexp(1.0f, -14)});
  const uint16_t bf[] = {0x3F80, 0xC040};  // 1.0, -3.0
  SafeTensor b{"BF16",
               {2},
               std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(bf), reinterpret_cast<const uint8_t*>(bf) + 4)};
  CHECK(b.to_f32("b") == std::vector<float>{1.0f, -3.0f});
  SafeTensor i{"I64", {1}, std::vector<uint8_t>(8, 0)};
  CHECK(contains(user_error_of([&] { i.to_f32("tensor 'x'"); }), "tensor 'x': holds I64 values"));
}

TEST_CASE("safetensors: damaged files are refused naming the file") {
  testing::TempDir dir("safetensors_bad");
  const std::string path = dir.str() + "/m.safetensors";
  SafeTensorMap t;
  t.emplace("w", SafeTensor::from_f32(std::vector<float>(16, 0.5f), {4, 4}));
  write_safetensors(path, t);
  const std::string good = read_bytes(path);
  write_bytes(path, good.substr(0, good.size() - 4));  // truncated data
  std::string msg = user_error_of([&] { read_safetensors(path); });
  CHECK(contains(msg, path));
  CHECK(contains(msg, "truncated"));
  write_bytes(path, std::string("\xff\xff\xff\xff\0\0\0\0", 8) + good.substr(8));  // absurd header length
  CHECK(contains(user_error_of([&] { read_safetensors(path); }), "header length"));
  write_bytes(path, "PK\x03\x04 not a safetensors file at all");
  CHECK(contains(user_error_of([&] { read_safetensors(path); }), path));
  CHECK(contains(user_error_of([&] { read_safetensors(dir.str() + "/none.safetensors"); }), "no such file"));
}

TEST_CASE("export then import gives back every parameter bit for bit, in both formats") {
  const std::vector<std::string> models = {
      // vocab 50 pads to 56: the padded rows travel too.
      "model: {mixer: mamba, d_model: 32, n_layer: 2, vocab_size: 50, d_state: 4, dt_rank: 3}\n",
      "model: {mixer: mamba2, d_model: 32, n_layer: 2, vocab_size: 64, d_state: 8, headdim: 16, ngroups: 2, "
      "chunk_size: 8}\n",
  };
  for (const std::string& yaml : models) {
    for (WeightFormat format : {WeightFormat::hf, WeightFormat::mamba_ssm}) {
      CAPTURE(yaml);
      CAPTURE(static_cast<int>(format));
      testing::TempDir dir("interop_roundtrip");
      auto [config, params] = small_model(yaml);
      ExportResult r = export_weights(config, params, dir.str() + "/out", format);
      CHECK(std::filesystem::exists(r.config_path));
      const SafeTensorMap written = read_safetensors(r.weights_path);
      CHECK(written.size() == params.size() + (format == WeightFormat::mamba_ssm ? 1 : 0));
      CHECK(written.at("backbone.layers.1.mixer.conv1d.weight").shape.size() == 3);
      ImportedModel im = import_weights(dir.str() + "/out");
      REQUIRE(im.params.size() == params.size());
      for (const auto& [name, a] : params) {
        CAPTURE(name);
        REQUIRE(im.params.count(name));
        CHECK(im.params.at(name).shape == a.shape);
        CHECK(im.params.at(name).bytes == a.bytes);
      }
      const ModelOptions& m = im.config.model;
      CHECK(m.mixer == config.model.mixer);
      CHECK(m.d_state == config.model.d_state);
      CHECK(padded_vocab_size(m.vocab_size, m.pad_vocab_multiple) ==
            padded_vocab_size(config.model.vocab_size, config.model.pad_vocab_multiple));
      if (m.mixer == "mamba") {
        CHECK(m.mixers.get<MambaOptions>().dt_rank == 3);
      } else {
        CHECK(m.mixers.get<Mamba2Options>().ngroups == 2);
        CHECK(m.mixers.get<Mamba2Options>().chunk_size == 8);
      }
    }
  }
}

TEST_CASE("the transformers config names the architecture and the resolved sizes") {
  testing::TempDir dir("interop_config");
  auto [config, params] = small_model("model: {mixer: mamba, d_model: 40, n_layer: 1, vocab_size: 50}\n");
  export_weights(config, params, dir.str(), WeightFormat::hf);
  const Json c = parse_json(read_bytes(dir.str() + "/config.json"), "config.json");
  CHECK(c["model_type"] == "mamba");
  CHECK(json_int(c["vocab_size"], "") == 56);     // transformers gets the padded rows
  CHECK(json_int(c["time_step_rank"], "") == 3);  // ceil(40 / 16), dt_rank 0 resolved
  CHECK(json_bool(c["tie_word_embeddings"], ""));
  CHECK(json_number(c["layer_norm_epsilon"], "") == 1e-5);
}

TEST_CASE("export and import refuse what has no counterpart, naming the key or tensor") {
  testing::TempDir dir("interop_bad");
  {
    auto [config, params] = small_model("model: {mixer: s4d, d_model: 16, n_layer: 1, vocab_size: 16}\n");
    const std::string msg = user_error_of([&] { export_weights(config, params, dir.str() + "/s4", WeightFormat::hf); });
    CHECK(contains(msg, "'s4d'"));
    CHECK(contains(msg, "model.mixer"));
  }
  CHECK(contains(user_error_of([] { parse_weight_format("onnx"); }), "--format: 'onnx'"));

  auto [config, params] = small_model("model: {mixer: mamba, d_model: 16, n_layer: 1, vocab_size: 16, d_state: 4}\n");
  const std::string out = dir.str() + "/m";
  export_weights(config, params, out, WeightFormat::hf);
  const std::string cfg = read_bytes(out + "/config.json"), weights = read_bytes(out + "/model.safetensors");

  write_bytes(out + "/config.json", R"({"model_type": "llama", "hidden_size": 16})");
  std::string msg = user_error_of([&] { import_weights(out); });
  CHECK(contains(msg, out + "/config.json"));
  CHECK(contains(msg, "model_type"));
  CHECK(contains(msg, "'llama'"));

  std::string biased = cfg;
  biased.replace(biased.find("\"use_bias\": false"), 17, "\"use_bias\": true");
  write_bytes(out + "/config.json", biased);
  CHECK(contains(user_error_of([&] { import_weights(out); }), "key 'use_bias'"));

  // A config whose sizes disagree with the tensors: the tensor and both shapes are named.
  std::string wider = cfg;
  wider.replace(wider.find("\"state_size\": 4"), 15, "\"state_size\": 8");
  write_bytes(out + "/config.json", wider);
  msg = user_error_of([&] { import_weights(out); });
  CHECK(contains(msg, "backbone.layers.0.mixer.x_proj.weight"));  // dt_rank 1 + 2 * d_state rows
  CHECK(contains(msg, "(9, 32)"));
  CHECK(contains(msg, "(17, 32)"));

  // A missing tensor, then an unexpected one.
  write_bytes(out + "/config.json", cfg);
  SafeTensorMap t = read_safetensors(out + "/model.safetensors");
  SafeTensor d = t.at("backbone.layers.0.mixer.D");
  t.erase("backbone.layers.0.mixer.D");
  write_safetensors(out + "/model.safetensors", t);
  CHECK(contains(user_error_of([&] { import_weights(out); }), "has no tensor 'backbone.layers.0.mixer.D'"));
  t.emplace("backbone.layers.0.mixer.D", d);
  t.emplace("backbone.layers.0.mixer.extra", d);
  write_safetensors(out + "/model.safetensors", t);
  CHECK(contains(user_error_of([&] { import_weights(out); }), "'backbone.layers.0.mixer.extra'"));

  std::filesystem::remove(out + "/model.safetensors");
  CHECK(contains(user_error_of([&] { import_weights(out); }), "has no model.safetensors"));
  CHECK(contains(user_error_of([&] { import_weights(dir.str() + "/nowhere"); }), "is not a directory"));
}
