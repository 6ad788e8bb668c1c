// TensorBoard event files (train/tensorboard.h): CRC-32C against published check values,
// Events against bytes worked out by hand from the protobuf wire format, the TFRecord
// framing, and a run with train.tensorboard writing a readable file. Reading the files with
// the tensorboard package itself is tools/tb_check.py.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "temp_dir.h"
#include "train/metrics.h"
#include "train/tensorboard.h"

using namespace ssmtrain;

namespace {
std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s += static_cast<char>(c);
  return s;
}
uint32_t le32(const std::string& s, size_t at) {
  uint32_t v;
  std::memcpy(&v, s.data() + at, 4);
  return v;
}
}  // namespace

TEST_CASE("crc32c: the published check values") {
  // "123456789" is the standard check string of every CRC catalogue (CRC-32C: 0xE3069283);
  // the others are the test vectors of RFC 3720 (iSCSI), appendix B.4.
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff'), up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) up[i] = static_cast<char>(i), down[i] = static_cast<char>(31 - i);
  CHECK(crc32c(zeros.data(), 32) == 0x8A9136AAu);
  CHECK(crc32c(ones.data(), 32) == 0x62A8AB43u);
  CHECK(crc32c(up.data(), 32) == 0x46DD794Eu);
  CHECK(crc32c(down.data(), 32) == 0x113FDB5Cu);
  CHECK(crc32c("", 0) == 0u);
  // Continuing a CRC over a second piece equals the CRC of the whole.
  CHECK(crc32c("56789", 5, crc32c("1234", 4)) == 0xE3069283u);
  // The masking: ((c >> 15) | (c << 17)) + 0xa282ead8, here for c = 0xE3069283.
  const uint32_t c = 0xE3069283u;
  CHECK(masked_crc32c("123456789", 9) == static_cast<uint32_t>(((c >> 15) | (c << 17)) + 0xa282ead8u));
}

TEST_CASE("events: the bytes of an Event worked out by hand") {
  // wall_time 1.5: field 1, wire type 1 -> tag 0x09, then the double 0x3FF8000000000000 LE.
  const std::string wall = bytes({0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F});
  // file_version: field 3, wire type 2 -> 0x1A, length 13, "brain.Event:2".
  CHECK(encode_file_version_event(1.5) == wall + bytes({0x1A, 13}) + "brain.Event:2");

  // step 3: field 2, varint -> 0x10 0x03. summary: field 5, wire type 2 -> 0x2A, length 13:
  //   Summary.value (field 1 -> 0x0A), length 11: Value.tag (0x0A, 4, "loss"),
  //   Value.simple_value (field 2, wire type 5 -> 0x15) 2.0f = 0x40000000 LE.
  const std::string value = bytes({0x0A, 4}) + "loss" + bytes({0x15, 0, 0, 0, 0x40});
  CHECK(encode_scalars_event(1.5, 3, {{"loss", 2.0f}}) == wall + bytes({0x10, 3, 0x2A, 13, 0x0A, 11}) + value);

  // step 300 is a two-byte varint (0xAC 0x02); two values are two repeated Value fields.
  const std::string two = encode_scalars_event(1.5, 300, {{"loss", 2.0f}, {"lr", 0.5f}});
  const std::string value2 = bytes({0x0A, 2}) + "lr" + bytes({0x15, 0, 0, 0, 0x3F});
  CHECK(two == wall + bytes({0x10, 0xAC, 0x02, 0x2A, 13 + 11, 0x0A, 11}) + value + bytes({0x0A, 9}) + value2);

  // step 0 is proto3's default and left out, as protobuf's serializer does.
  CHECK(encode_scalars_event(1.5, 0, {{"loss", 2.0f}}) == wall + bytes({0x2A, 13, 0x0A, 11}) + value);

  // session_log: field 7 -> 0x3A, length 2: SessionLog.status (field 1, varint) START = 1.
  CHECK(encode_session_start_event(1.5, 12) == wall + bytes({0x10, 12, 0x3A, 2, 0x08, 0x01}));
}

TEST_CASE("events: TFRecord framing is length, masked CRC of the length, data, masked CRC of the data") {
  const std::string data = encode_file_version_event(1.5);
  const std::string r = tfrecord(data);
  REQUIRE(r.size() == 8 + 4 + data.size() + 4);
  uint64_t n;
  std::memcpy(&n, r.data(), 8);
  CHECK(n == data.size());
  CHECK(le32(r, 8) == masked_crc32c(r.data(), 8));
  CHECK(r.substr(12, data.size()) == data);
  CHECK(le32(r, 12 + data.size()) == masked_crc32c(data.data(), data.size()));
}

TEST_CASE("events: a run log with tensorboard writes each metrics record as scalars under its split") {
  testing::TempDir dir("tensorboard");
  {
    RunLog log(dir.str(), true);
    log.enable_tensorboard(0);
    JsonLine step;
    step.add("step", int64_t{5}).add("loss", 2.0).add("lr", 0.5);
    log.metrics(step);
    JsonLine val;
    val.add("step", int64_t{5}).add("split", std::string("val")).add("loss", 1.5);
    log.metrics(val);
  }
  std::string file;
  for (const auto& e : std::filesystem::directory_iterator(dir.path))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) file = e.path().string();
  REQUIRE(!file.empty());
  std::ifstream in(file, std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), {});
  // Walk the records: file_version, then the two scalar events (wall times vary, so the
  // checks look at the parts after the 9 bytes of wall_time).
  std::vector<std::string> events;
  for (size_t at = 0; at < all.size();) {
    uint64_t n;
    REQUIRE(at + 12 <= all.size());
    std::memcpy(&n, all.data() + at, 8);
    REQUIRE(at + 16 + n <= all.size());
    CHECK(le32(all, at + 8) == masked_crc32c(all.data() + at, 8));
    events.push_back(all.substr(at + 12, n));
    CHECK(le32(all, at + 12 + n) == masked_crc32c(all.data() + at + 12, n));
    at += 16 + n;
  }
  REQUIRE(events.size() == 3);
  CHECK(events[0].substr(9) == bytes({0x1A, 13}) + "brain.Event:2");
  CHECK(events[1].substr(9) == encode_scalars_event(0, 5, {{"train/loss", 2.0f}, {"train/lr", 0.5f}}).substr(9));
  CHECK(events[2].substr(9) == encode_scalars_event(0, 5, {{"val/loss", 1.5f}}).substr(9));
}
