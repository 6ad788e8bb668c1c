// Tests of the checkpoint file layer (train/checkpoint_io.h): round trips, error messages
// for damaged or foreign files, the temp-file protocol and the run-directory helpers.
#include <doctest/doctest.h>
#include <hdf5.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <system_error>

#include "train/checkpoint_io.h"
#include "temp_dir.h"
#include "user_error.h"

namespace fs = std::filesystem;
using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("ckpt") {}
};

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<float> ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i);
  return v;
}

// A checkpoint whose file is mostly one large dataset, so the middle of the file is data.
void write_big_checkpoint(const std::string& path, int64_t step) {
  CheckpointWriter w(path);
  w.write_string("config", "model: tiny\n");
  w.write_array("model/big", HostArray::from_vector(ramp(64 * 1024, 0.25f), {256, 256}));
  w.write_array("model/small", HostArray::from_vector(std::vector<int32_t>{1, 2, 3}));
  w.write_attr("", "step", step);
  w.commit();
}

}  // namespace

TEST_CASE("checkpoint round trip of every dtype and shape") {
  TempDir dir;
  std::string path = dir.file("ckpt.h5");
  std::vector<uint16_t> bf16_bits = {0x3F80, 0xC000, 0x7FC0, 0x0001};  // 1.0, -2.0, NaN, smallest subnormal
  std::vector<HostArray> arrays = {
      HostArray::from_vector(ramp(6, 0.5f), {2, 3}),
      HostArray::from_vector(std::vector<double>{-1.0 / 3.0}, {}),  // 0-d scalar
      HostArray::from_vector(std::vector<int32_t>{-7, 0, std::numeric_limits<int32_t>::max(), 42}),
      HostArray::from_vector(std::vector<int64_t>{}, {2, 0, 3}),  // an empty dimension
      HostArray::from_vector(std::vector<int64_t>{std::numeric_limits<int64_t>::min(), 5}, {1, 2}),
      HostArray::from_vector(bf16_bits, {2, 1, 2}),
      HostArray::from_vector(std::vector<uint8_t>{0, 1, 255}),
  };
  {
    CheckpointWriter w(path);
    for (size_t i = 0; i < arrays.size(); ++i) w.write_array("arrays/a" + std::to_string(i), arrays[i]);
    w.write_array("raw/f32", "f32", {3}, std::vector<float>{1, 2, 3}.data());
    w.commit();
  }
  CheckpointReader r(path);
  r.verify();
  for (size_t i = 0; i < arrays.size(); ++i) {
    CAPTURE(i);
    HostArray back = r.read_array("arrays/a" + std::to_string(i));
    CHECK(back.dtype == arrays[i].dtype);
    CHECK(back.shape == arrays[i].shape);
    CHECK(back.bytes == arrays[i].bytes);
  }
  HostArray scalar = r.read_array("arrays/a1");
  CHECK(scalar.shape.empty());
  CHECK(scalar.numel() == 1);
  CHECK(scalar.as<double>() == std::vector<double>{-1.0 / 3.0});
  HostArray empty = r.read_array("arrays/a3");
  CHECK(empty.numel() == 0);
  CHECK(empty.bytes.empty());
  CHECK(r.read_array("arrays/a5").as<uint16_t>() == bf16_bits);
  CHECK(r.read_array("raw/f32").as<float>() == std::vector<float>{1, 2, 3});
  CHECK(host_dtype_size("bf16") == 2);
  CHECK(host_dtype_size("i64") == 8);
}

TEST_CASE("checkpoint strings and attributes round trip") {
  TempDir dir;
  std::string path = dir.file("ckpt.h5");
  const std::string yaml = "model:\n  kind: mamba\n  d_model: 768 # comment\ntrain:\n  lr: 3.0e-4\n  name: \"été\"\n";
  {
    CheckpointWriter w(path);
    w.write_string("config", yaml);
    w.write_string("notes/empty", "");
    w.write_array("model/w", HostArray::from_vector(ramp(4, 1.0f)));
    w.write_attr("", "step", int64_t{-12});
    w.write_attr("/", "seed", std::numeric_limits<uint64_t>::max());
    w.write_attr("", "lr", 3.0e-4);
    w.write_attr("", "run", "baseline");
    w.write_attr("", "run", std::string("replaced"));     // rewriting replaces the value
    w.write_attr("trainer/rng", "offset", uint32_t{77});  // the group is created on demand
    w.write_attr("model/w", "note", "on a dataset");
    w.commit();
  }
  CheckpointReader r(path);
  r.verify();
  CHECK(r.read_string("config") == yaml);
  CHECK(r.read_string("notes/empty").empty());
  CHECK(r.attr_int("", "step") == -12);
  CHECK(r.attr_uint("", "seed") == std::numeric_limits<uint64_t>::max());
  CHECK(r.attr_double("", "lr") == 3.0e-4);
  CHECK(r.attr_string("/", "run") == "replaced");
  CHECK(r.attr_uint("trainer/rng", "offset") == 77);
  CHECK(r.attr_int("trainer/rng", "offset") == 77);
  CHECK(r.attr_string("model/w", "note") == "on a dataset");
  CHECK(r.attr_string("model/w", "dtype") == "f32");
  CHECK(r.attr_string("config", "dtype") == "str");
  CHECK(r.attr_string("", "format") == "ssmtrain-checkpoint");
  CHECK(r.attr_int("", "format_version") == 1);
  CHECK(r.attr_int("", "num_datasets") == 3);
  CHECK(r.has_attr("", "step"));
  CHECK_FALSE(r.has_attr("", "epoch"));
  CHECK_FALSE(r.has_attr("nowhere", "step"));

  std::string msg = user_error_of([&] { r.attr_int("", "epoch"); });
  CHECK(contains(msg, path));
  CHECK(contains(msg, "no root attribute 'epoch'"));
  msg = user_error_of([&] { r.attr_int("", "run"); });
  CHECK(contains(msg, "root attribute 'run' is a string, expected a signed 64-bit integer"));
  msg = user_error_of([&] { r.attr_int("", "seed"); });
  CHECK(contains(msg, "out of range"));
  msg = user_error_of([&] { r.attr_uint("", "step"); });
  CHECK(contains(msg, "root attribute 'step' is -12, expected an unsigned integer"));
  msg = user_error_of([&] { r.attr_double("", "step"); });
  CHECK(contains(msg, "expected a floating-point number"));
  msg = user_error_of([&] { r.attr_string("model/w", "missing"); });
  CHECK(contains(msg, "no attribute 'missing' of 'model/w'"));
}

TEST_CASE("checkpoint groups are created from paths and listed recursively") {
  TempDir dir;
  std::string path = dir.file("ckpt.h5");
  {
    CheckpointWriter w(path);
    w.write_array("model/layers.1.mixer.D", HostArray::from_vector(ramp(2, 1.0f)));
    w.write_array("model/layers.0.mixer.A_log", HostArray::from_vector(ramp(3, 1.0f)));
    w.write_array("optim/exp_avg/layers.0.mixer.A_log", HostArray::from_vector(ramp(3, 2.0f)));
    w.write_array("optim/exp_avg_sq/layers.0.mixer.A_log", HostArray::from_vector(ramp(3, 3.0f)));
    w.write_string("config", "x: 1\n");
    w.commit();
  }
  CheckpointReader r(path);
  CHECK(r.list("model") == std::vector<std::string>{"layers.0.mixer.A_log", "layers.1.mixer.D"});
  CHECK(r.list("optim") == std::vector<std::string>{"exp_avg/layers.0.mixer.A_log", "exp_avg_sq/layers.0.mixer.A_log"});
  CHECK(r.list("optim/exp_avg") == std::vector<std::string>{"layers.0.mixer.A_log"});
  CHECK(r.list("") == std::vector<std::string>{"config", "model/layers.0.mixer.A_log", "model/layers.1.mixer.D",
                                               "optim/exp_avg/layers.0.mixer.A_log",
                                               "optim/exp_avg_sq/layers.0.mixer.A_log"});
  CHECK(r.has("model"));
  CHECK(r.has("optim/exp_avg"));
  CHECK(r.has("model/layers.0.mixer.A_log"));
  CHECK_FALSE(r.has("model/layers.0.mixer"));
  CHECK_FALSE(r.has("trainer/step"));
  CHECK(r.read_array("optim/exp_avg_sq/layers.0.mixer.A_log").as<float>() == ramp(3, 3.0f));
  std::string msg = user_error_of([&] { r.list("trainer"); });
  CHECK(contains(msg, "has no group 'trainer'"));
  msg = user_error_of([&] { r.list("config"); });
  CHECK(contains(msg, "'config' is not a group"));
}

TEST_CASE("checkpoint missing or mistyped dataset is named in the error") {
  TempDir dir;
  std::string path = dir.file("ckpt.h5");
  {
    CheckpointWriter w(path);
    w.write_array("model/w", HostArray::from_vector(ramp(4, 1.0f)));
    w.write_string("config", "a: 1\n");
    w.commit();
  }
  CheckpointReader r(path);
  std::string msg = user_error_of([&] { r.read_array("model/layers.3.mixer.A_log"); });
  CHECK(msg == "checkpoint '" + path + "': has no dataset 'model/layers.3.mixer.A_log'");
  msg = user_error_of([&] { r.read_array("optim/exp_avg/w"); });
  CHECK(contains(msg, "has no dataset 'optim/exp_avg/w'"));
  msg = user_error_of([&] { r.read_array("model"); });
  CHECK(contains(msg, "'model' is a group, expected a dataset"));
  msg = user_error_of([&] { r.read_array("config"); });
  CHECK(contains(msg, "dataset 'config' holds a string, expected an array"));
  msg = user_error_of([&] { r.read_string("model/w"); });
  CHECK(contains(msg, "dataset 'model/w' does not hold a fixed-length string"));
  msg = user_error_of([&] { r.read_array("model/w").as<double>(); });
  CHECK(contains(msg, "array holds f32 values, expected f64"));
}

TEST_CASE("checkpoint missing file is reported by name") {
  TempDir dir;
  std::string path = dir.file("ckpt_00000001.h5");
  CHECK(user_error_of([&] { CheckpointReader r(path); }) == "checkpoint '" + path + "': no such file");
}

TEST_CASE("checkpoint non-HDF5 and empty files are rejected") {
  TempDir dir;
  std::string text = dir.file("notes.h5");
  write_bytes(text, std::vector<char>(4096, 'x'));
  CHECK(user_error_of([&] { CheckpointReader r(text); }) ==
        "checkpoint '" + text + "' is truncated or corrupt (not a readable HDF5 file)");
  std::string empty = dir.file("empty.h5");
  write_bytes(empty, {});
  CHECK(user_error_of([&] { CheckpointReader r(empty); }) ==
        "checkpoint '" + empty + "' is truncated or corrupt (not a readable HDF5 file)");
}

namespace {
// An HDF5 file written with the C API directly, for formats our writer refuses to produce.
void write_foreign_hdf5(const std::string& path, const char* format, int64_t version) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  REQUIRE(file >= 0);
  hid_t space = H5Screate(H5S_SCALAR);
  if (format) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, std::strlen(format));
    hid_t attr = H5Acreate2(file, "format", type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, type, format);
    H5Aclose(attr);
    H5Tclose(type);
  }
  hid_t attr = H5Acreate2(file, "format_version", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, H5T_NATIVE_INT64, &version);
  H5Aclose(attr);
  H5Sclose(space);
  H5Fclose(file);
}
}  // namespace

TEST_CASE("checkpoint foreign format and newer format_version are rejected") {
  TempDir dir;
  std::string foreign = dir.file("foreign.h5");
  write_foreign_hdf5(foreign, "keras", 1);
  CHECK(user_error_of([&] { CheckpointReader r(foreign); }) ==
        "checkpoint '" + foreign +
            "' is not an ssmtrain checkpoint (root attribute format is 'keras', expected 'ssmtrain-checkpoint')");
  std::string bare = dir.file("bare.h5");
  write_foreign_hdf5(bare, nullptr, 1);
  CHECK(contains(user_error_of([&] { CheckpointReader r(bare); }), "has no root attribute 'format'"));
  std::string newer = dir.file("newer.h5");
  write_foreign_hdf5(newer, "ssmtrain-checkpoint", 2);
  CHECK(user_error_of([&] { CheckpointReader r(newer); }) ==
        "checkpoint '" + newer + "' has format_version 2, but this build reads only format_version 1");
}

TEST_CASE("checkpoint truncated to half its size is rejected") {
  TempDir dir;
  std::string path = dir.file("ckpt_00000010.h5");
  write_big_checkpoint(path, 10);
  std::vector<char> bytes = read_bytes(path);
  REQUIRE(bytes.size() > 256 * 1024);
  bytes.resize(bytes.size() / 2);
  write_bytes(path, bytes);
  std::string msg = user_error_of([&] {
    CheckpointReader r(path);
    r.verify();
  });
  CHECK(contains(msg, "checkpoint '" + path + "'"));
  CHECK(contains(msg, "truncated or corrupt"));
}

TEST_CASE("checkpoint flipped bytes in the data are caught by verify") {
  TempDir dir;
  std::string path = dir.file("ckpt_00000010.h5");
  write_big_checkpoint(path, 10);
  std::vector<char> bytes = read_bytes(path);
  size_t middle = bytes.size() / 2;
  for (size_t i = middle; i < middle + 3; ++i) bytes[i] = static_cast<char>(bytes[i] ^ 0x5A);
  write_bytes(path, bytes);
  CheckpointReader r(path);  // the HDF5 structure is intact: only verify() can notice
  CHECK(r.read_array("model/big").as<float>() != ramp(64 * 1024, 0.25f));
  std::string msg = user_error_of([&] { r.verify(); });
  CHECK(contains(msg, "checkpoint '" + path + "': dataset 'model/big' is corrupt (crc32 of its bytes is 0x"));
}

TEST_CASE("checkpoint verify catches a dataset removed after commit") {
  TempDir dir;
  std::string path = dir.file("ckpt.h5");
  write_big_checkpoint(path, 1);
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(file >= 0);
  REQUIRE(H5Ldelete(file, "/model/small", H5P_DEFAULT) >= 0);
  H5Fclose(file);
  CheckpointReader r(path);
  CHECK(contains(user_error_of([&] { r.verify(); }), "holds 2 datasets, but its root attribute num_datasets says 3"));
}

// Every single-byte flip either is reported as a UserError or changes nothing we read:
// the 1.8 object formats checksum the metadata and our crc32 covers the data, so no flip
// may hand back wrong values silently.
TEST_CASE("checkpoint single byte flips never yield wrong data silently") {
  TempDir dir;
  std::string clean = dir.file("clean.h5");
  {
    CheckpointWriter w(clean);
    w.write_string("config", "model: {d_model: 8}\n");
    w.write_array("model/w", HostArray::from_vector(ramp(12, 0.5f), {3, 4}));
    w.write_array("optim/exp_avg/w", HostArray::from_vector(std::vector<uint16_t>{1, 2, 3}));
    w.write_attr("", "step", int64_t{99});
    w.write_attr("trainer", "seed", uint64_t{12345});
    w.commit();
  }
  std::vector<char> original = read_bytes(clean);
  std::string path = dir.file("flipped.h5");
  int detected = 0, harmless = 0;
  for (size_t offset = 0; offset < original.size(); ++offset) {
    std::vector<char> bytes = original;
    bytes[offset] = static_cast<char>(bytes[offset] ^ 0x10);
    write_bytes(path, bytes);
    try {
      CheckpointReader r(path);
      r.verify();
      bool same = r.read_string("config") == "model: {d_model: 8}\n" &&
                  r.read_array("model/w").as<float>() == ramp(12, 0.5f) &&
                  r.read_array("model/w").shape == std::vector<int64_t>{3, 4} &&
                  r.read_array("optim/exp_avg/w").as<uint16_t>() == std::vector<uint16_t>{1, 2, 3} &&
                  r.attr_int("", "step") == 99 && r.attr_uint("trainer", "seed") == 12345 &&
                  r.list("") == std::vector<std::string>{"config", "model/w", "optim/exp_avg/w"};
      if (!same) FAIL_CHECK("a flip at byte " << offset << " changed the data without an error");
      ++harmless;
    } catch (const UserError&) {
      ++detected;
    }
  }
  MESSAGE("byte flips: " << detected << " reported, " << harmless << " in unused bytes (no effect)");
  CHECK(detected > 0);
}

TEST_CASE("checkpoint uncommitted writer leaves no file and keeps the old one") {
  TempDir dir;
  std::string path = dir.file("ckpt_00000005.h5");
  {
    CheckpointWriter w(path);
    w.write_array("model/w", HostArray::from_vector(ramp(4, 1.0f)));
    CHECK(fs::exists(w.temp_path()));
    CHECK_FALSE(fs::exists(path));
  }
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(fs::exists(path + ".tmp"));

  {
    CheckpointWriter w(path);
    w.write_array("model/w", HostArray::from_vector(ramp(4, 1.0f)));
    w.commit();
  }
  try {
    CheckpointWriter w(path);
    w.write_array("model/w", HostArray::from_vector(ramp(4, -1.0f)));
    throw UserError("simulated failure while saving");
  } catch (const UserError&) {
  }
  CHECK_FALSE(fs::exists(path + ".tmp"));
  CheckpointReader r(path);
  r.verify();
  CHECK(r.read_array("model/w").as<float>() == ramp(4, 1.0f));
}

// A write that fails for lack of space (here: a file size limit, EFBIG, which the kernel
// reports where a full disk gives ENOSPC) runs in a child process, so the limit and HDF5's
// exit-time cleanup are the child's alone. The child exits through exit(), running that
// cleanup: HDF5 1.10 crashed in it when a file's close had failed.
TEST_CASE("checkpoint write failing for lack of space names the file, removes the temp file and exits cleanly") {
  TempDir dir;
  std::string path = dir.file("ckpt_00000007.h5");
  {
    CheckpointWriter w(path);
    w.write_array("model/w", HostArray::from_vector(ramp(4, 1.0f)));
    w.commit();
  }
  std::string message_file = dir.file("message.txt");
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit{16 * 1024, 16 * 1024};
    int code = 10;
    if (setrlimit(RLIMIT_FSIZE, &limit) == 0) {
      try {
        CheckpointWriter w(path);
        w.write_array("model/w", HostArray::from_vector(ramp(64 * 1024, -1.0f)));  // 256 KiB
        w.commit();
        code = 11;  // nothing failed
      } catch (const std::system_error& e) {
        std::ofstream(message_file) << e.what();
        code = e.code().value() == EFBIG ? 0 : 12;
      } catch (...) {
        code = 13;
      }
    }
    std::exit(code);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  INFO("child status " << status);
  REQUIRE_FALSE(WIFSIGNALED(status));
  CHECK(WEXITSTATUS(status) == 0);
  std::ifstream in(message_file);
  std::string message((std::istreambuf_iterator<char>(in)), {});
  CHECK(contains(message, path));
  CHECK(contains(message, "File too large"));
  CHECK_FALSE(fs::exists(path + ".tmp"));
  CheckpointReader r(path);
  r.verify();
  CHECK(r.read_array("model/w").as<float>() == ramp(4, 1.0f));
}

TEST_CASE("checkpoint commit replaces an existing file") {
  TempDir dir;
  std::string path = dir.file("ckpt.h5");
  for (float scale : {1.0f, 2.0f}) {
    CheckpointWriter w(path);
    w.write_array("model/w", HostArray::from_vector(ramp(4, scale)));
    w.commit();
    CHECK_FALSE(fs::exists(path + ".tmp"));
  }
  CheckpointReader r(path);
  CHECK(r.read_array("model/w").as<float>() == ramp(4, 2.0f));
  CHECK(contains(user_error_of([&] { CheckpointWriter w(dir.file("no/such/dir/ckpt.h5")); }), "does not exist"));
}

TEST_CASE("checkpoint writer misuse is an internal error") {
  TempDir dir;
  CheckpointWriter w(dir.file("ckpt.h5"));
  w.write_array("model/w", HostArray::from_vector(ramp(2, 1.0f)));
  CHECK_THROWS_AS(w.write_array("model/w", HostArray::from_vector(ramp(2, 1.0f))), InternalError);
  CHECK_THROWS_AS(w.write_array("model//x", HostArray::from_vector(ramp(2, 1.0f))), InternalError);
  CHECK_THROWS_AS(w.write_array("model/x", "f16", {2}, ramp(2, 1.0f).data()), InternalError);
  CHECK_THROWS_AS(w.write_attr("model/w", "crc32", int64_t{0}), InternalError);
  CHECK_THROWS_AS(w.write_attr("", "num_datasets", int64_t{0}), InternalError);
  CHECK_THROWS_AS(HostArray::from_vector(ramp(5, 1.0f), {2, 2}), InternalError);
  CHECK_THROWS_AS(w.write_string("config", std::string("a\0b", 3)), UserError);
}

TEST_CASE("checkpoint_path and checkpoint_step agree") {
  CHECK(checkpoint_path("runs/a", 1234) == "runs/a/ckpt_00001234.h5");
  CHECK(checkpoint_path("runs/a", 123456789) == "runs/a/ckpt_123456789.h5");
  CHECK(checkpoint_step("runs/a/ckpt_00001234.h5") == 1234);
  CHECK(checkpoint_step(checkpoint_path("r", 123456789)) == 123456789);
  CHECK_FALSE(checkpoint_step("runs/a/ckpt_1234.h5").has_value());
  CHECK_FALSE(checkpoint_step("runs/a/ckpt_00001234.h5.tmp").has_value());
  CHECK_FALSE(checkpoint_step("runs/a/ckpt_0000x234.h5").has_value());
  CHECK_FALSE(checkpoint_step("runs/a/model_00001234.h5").has_value());
}

TEST_CASE("checkpoint prune keeps the newest N and nothing else is touched") {
  TempDir dir;
  for (int64_t step : {5, 1, 99999999, 100000000, 40}) write_bytes(checkpoint_path(dir.str(), step), {'x'});
  std::vector<std::string> others = {"notes.txt", "ckpt_00000200.h5.tmp", "ckpt_12.h5", "ckpt_abcdefgh.h5"};
  for (const auto& name : others) write_bytes(dir.file(name), {'y'});
  fs::create_directory(dir.file("ckpt_00000300.h5"));  // a directory with a checkpoint's name

  CHECK(list_checkpoints(dir.str()) ==
        std::vector<std::string>{checkpoint_path(dir.str(), 1), checkpoint_path(dir.str(), 5),
                                 checkpoint_path(dir.str(), 40), checkpoint_path(dir.str(), 99999999),
                                 checkpoint_path(dir.str(), 100000000)});
  CHECK(prune_checkpoints(dir.str(), 0).empty());
  CHECK(prune_checkpoints(dir.str(), 9).empty());
  CHECK(list_checkpoints(dir.str()).size() == 5);
  std::vector<std::string> removed = prune_checkpoints(dir.str(), 2);
  CHECK(removed == std::vector<std::string>{checkpoint_path(dir.str(), 1), checkpoint_path(dir.str(), 5),
                                            checkpoint_path(dir.str(), 40)});
  CHECK(list_checkpoints(dir.str()) ==
        std::vector<std::string>{checkpoint_path(dir.str(), 99999999), checkpoint_path(dir.str(), 100000000)});
  for (const auto& name : others) CHECK(fs::exists(dir.file(name)));
  CHECK(fs::is_directory(dir.file("ckpt_00000300.h5")));
  CHECK(list_checkpoints(dir.file("missing")).empty());
}

TEST_CASE("checkpoint newest valid skips corrupt newer files") {
  TempDir dir;
  CHECK_FALSE(newest_valid_checkpoint(dir.str()).has_value());
  CHECK_FALSE(newest_valid_checkpoint(dir.file("missing")).has_value());
  for (int64_t step : {10, 20, 30, 40}) write_big_checkpoint(checkpoint_path(dir.str(), step), step);
  std::string corrupt = checkpoint_path(dir.str(), 30);
  std::vector<char> bytes = read_bytes(corrupt);
  bytes[bytes.size() / 2] ^= 0x01;
  write_bytes(corrupt, bytes);
  std::string truncated = checkpoint_path(dir.str(), 40);
  bytes = read_bytes(truncated);
  bytes.resize(bytes.size() / 2);
  write_bytes(truncated, bytes);

  std::vector<std::string> skipped;
  std::optional<std::string> found = newest_valid_checkpoint(dir.str(), &skipped);
  REQUIRE(found.has_value());
  CHECK(*found == checkpoint_path(dir.str(), 20));
  CHECK(CheckpointReader(*found).attr_int("", "step") == 20);
  REQUIRE(skipped.size() == 2);
  CHECK(contains(skipped[0], truncated));
  CHECK(contains(skipped[1], corrupt));
  CHECK(contains(skipped[1], "dataset 'model/big' is corrupt"));
}

namespace {
std::string source_dir() {
#ifdef SSMTRAIN_SOURCE_DIR
  return SSMTRAIN_SOURCE_DIR;
#else
  return fs::path(__FILE__).parent_path().parent_path().parent_path().string();
#endif
}

// stdout and stderr of a shell command, and its exit status.
std::pair<int, std::string> run_command(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::array<char, 4096> buf;
  while (size_t n = std::fread(buf.data(), 1, buf.size(), pipe)) output.append(buf.data(), n);
  int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}
}  // namespace

TEST_CASE("checkpoint file reads back in h5py") {
  if (run_command("python3 -c 'import h5py, numpy'").first != 0) {
    MESSAGE("SKIPPED: python3 with h5py and numpy is not available, so the h5py interoperability check did not run");
    return;
  }
  fs::path script = fs::path(source_dir()) / "tests/train/read_checkpoint.py";
  REQUIRE_MESSAGE(fs::exists(script), "missing " << script.string() << " (run the tests from the repository root)");
  TempDir dir;
  std::string path = dir.file("ckpt_00001234.h5");
  {
    CheckpointWriter w(path);
    w.write_string("config", "model:\n  d_model: 64\n");
    w.write_array("model/layers.0.mixer.A_log", HostArray::from_vector(ramp(6, 0.5f), {2, 3}));
    w.write_array("model/embedding.weight", HostArray::from_vector(std::vector<uint16_t>{0x3F80, 0xC000, 0x3F00}));
    w.write_array("optim/exp_avg/layers.0.mixer.A_log",
                  HostArray::from_vector(std::vector<double>{-0.0, -1, -2, -3, -4, -5}, {2, 3}));
    w.write_array("optim/step", HostArray::from_vector(std::vector<int64_t>{7}, {}));
    w.write_array("trainer/empty", "i32", {0, 4}, nullptr);
    w.write_attr("", "step", int64_t{1234});
    w.write_attr("", "seed", std::numeric_limits<uint64_t>::max());
    w.write_attr("", "loss", 2.5);
    w.write_attr("", "run_name", "interop");
    w.write_attr("trainer", "epoch", -3);
    w.commit();
  }
  auto [status, output] = run_command("python3 " + script.string() + " --expect-interop-test " + path);
  INFO(output);
  CHECK(status == 0);
  CHECK(contains(output, "model/layers.0.mixer.A_log  dtype=f32  shape=(2, 3)  crc ok"));
  CHECK(contains(output, "interop expectations: all passed"));
}
