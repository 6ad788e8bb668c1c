// Byte-level text: plain and gzip files, windows, determinism, cursor, rank sharding, the
// train/val hold-out and the errors that name the key and the file.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "core/error.h"
#include "core/random.h"
#include "data/dataset.h"
#include "data/text.h"
#include "temp_dir.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;
namespace fs = std::filesystem;

namespace {

struct TextTempDir : testing::TempDir {
  TextTempDir() : TempDir("text") {}
};

// Printable pseudo-random text, so windows of it never repeat by chance.
std::string random_text(int64_t n, uint64_t seed) {
  Generator gen(seed);
  std::string s(n, ' ');
  for (auto& c : s) c = static_cast<char>(32 + gen.below(95));
  return s;
}

void write_plain(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// mode "wb" starts the file, "ab" appends another gzip member.
void write_gzip(const std::string& path, const std::string& text, const char* mode = "wb") {
  gzFile f = gzopen(path.c_str(), mode);
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<int32_t> bytes_as_tokens(const std::string& s, int64_t begin, int64_t count) {
  std::vector<int32_t> t;
  for (int64_t i = begin; i < begin + count; ++i) t.push_back(static_cast<unsigned char>(s[i]));
  return t;
}

}  // namespace

TEST_CASE("text files read the same plain and gzip") {
  TextTempDir dir;
  std::string text = random_text(300000, 1);
  text[5] = '\0', text[6] = '\xff';  // every byte value is a token
  write_plain(dir.file("a.txt"), text);
  write_gzip(dir.file("a.txt.gz"), text);
  write_gzip(dir.file("no_suffix"), text);  // detected by content, not by name
  write_gzip(dir.file("multi.gz"), text.substr(0, 1000));
  write_gzip(dir.file("multi.gz"), text.substr(1000), "ab");
  std::vector<unsigned char> expected(text.begin(), text.end());
  CHECK(read_text_file(dir.file("a.txt"), "data.path") == expected);
  CHECK(read_text_file(dir.file("a.txt.gz"), "data.path") == expected);
  CHECK(read_text_file(dir.file("no_suffix"), "data.path") == expected);
  CHECK(read_text_file(dir.file("multi.gz"), "data.path") == expected);
  CHECK(fs::file_size(dir.file("a.txt.gz")) < text.size());  // really compressed

  TextDataset plain({dir.file("a.txt")}, WindowOrder::shuffled, 5, 0, 1);
  TextDataset gz({dir.file("a.txt.gz")}, WindowOrder::shuffled, 5, 0, 1);
  CHECK(plain.vocab_size() == 256);
  CHECK(plain.byte_level());
  for (int k = 0; k < 5; ++k) {
    Batch a = plain.next(4, 128), b = gz.next(4, 128);
    CHECK(a.inputs == b.inputs);
    CHECK(a.targets == b.targets);
    CHECK(a.num_target_bytes == 4 * 128);
  }
}

TEST_CASE("text read errors name the key and the file") {
  TextTempDir dir;
  std::string text = random_text(5000, 2);
  write_gzip(dir.file("t.gz"), text);
  std::string gz;
  {
    std::ifstream in(dir.file("t.gz"), std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(in), {});
  }
  SUBCASE("missing") {
    std::string msg = user_error_of([&] { read_text_file(dir.file("none.txt"), "data.path"); });
    CHECK(contains(msg, "data.path"));
    CHECK(contains(msg, "none.txt"));
  }
  SUBCASE("empty") {
    write_plain(dir.file("empty.txt"), "");
    std::string msg = user_error_of([&] { TextDataset d({dir.file("empty.txt")}, WindowOrder::shuffled, 0, 0, 1); });
    CHECK(contains(msg, "data.path"));
    CHECK(contains(msg, "empty.txt"));
    CHECK(contains(msg, "is empty"));
  }
  SUBCASE("truncated gzip") {
    write_plain(dir.file("cut.gz"), gz.substr(0, gz.size() / 2));
    std::string msg = user_error_of([&] { read_text_file(dir.file("cut.gz"), "data.val_path"); });
    CHECK(contains(msg, "data.val_path"));
    CHECK(contains(msg, "cut.gz"));
    CHECK(contains(msg, "truncated"));
  }
  SUBCASE("corrupt gzip") {
    std::string bad = gz;
    for (size_t i = 20; i < 60; ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    write_plain(dir.file("bad.gz"), bad);
    std::string msg = user_error_of([&] { read_text_file(dir.file("bad.gz"), "data.path"); });
    CHECK(contains(msg, "bad.gz"));
    CHECK(contains(msg, "decompress"));
  }
  SUBCASE("shorter than one window") {
    write_plain(dir.file("short.txt"), "hello world");
    TextDataset d({dir.file("short.txt")}, WindowOrder::shuffled, 0, 0, 1);
    std::string msg = user_error_of([&] { d.next(1, 64); });
    CHECK(contains(msg, "data.path"));
    CHECK(contains(msg, "short.txt"));
    CHECK(contains(msg, "no window"));
  }
}

TEST_CASE("text windows are the file bytes in order") {
  TextTempDir dir;
  std::string a = random_text(1001, 3), b = random_text(250, 4);
  write_plain(dir.file("a.txt"), a);
  write_gzip(dir.file("b.gz"), b);
  TextDataset ds({dir.file("a.txt"), dir.file("b.gz")}, WindowOrder::sequential, 0, 0, 1);
  CHECK(ds.total_tokens() == 1251);
  // a: floor(1000 / 100) = 10 windows, b: floor(249 / 100) = 2.
  Batch batch = ds.next(12, 100);
  for (int64_t j = 0; j < 12; ++j) {
    const std::string& src = j < 10 ? a : b;
    int64_t start = (j < 10 ? j : j - 10) * 100;
    CHECK(std::vector<int32_t>(batch.inputs.begin() + j * 100, batch.inputs.begin() + (j + 1) * 100) ==
          bytes_as_tokens(src, start, 100));
    CHECK(std::vector<int32_t>(batch.targets.begin() + j * 100, batch.targets.begin() + (j + 1) * 100) ==
          bytes_as_tokens(src, start + 1, 100));
  }
}

TEST_CASE("text stream is deterministic and its cursor restores exactly") {
  TextTempDir dir;
  write_plain(dir.file("t.txt"), random_text(50000, 5));
  auto make = [&](uint64_t seed) { return TextDataset({dir.file("t.txt")}, WindowOrder::shuffled, seed, 0, 1); };
  TextDataset a = make(11), b = make(11), c = make(12);
  for (int k = 0; k < 3; ++k) {
    Batch ba = a.next(8, 64), bb = b.next(8, 64), bc = c.next(8, 64);
    CHECK(ba.inputs == bb.inputs);
    CHECK(ba.inputs != bc.inputs);
  }
  DataCursor saved = a.cursor();
  CHECK(saved.kind == "text");
  CHECK(saved.values == std::vector<int64_t>{0, 24, 64, 781});
  std::vector<Batch> rest;
  for (int k = 0; k < 120; ++k) rest.push_back(a.next(8, 64));  // past the end of epoch 0
  TextDataset resumed = make(11);
  resumed.restore(saved);
  for (int k = 0; k < 120; ++k) REQUIRE(resumed.next(8, 64).inputs == rest[k].inputs);
  // rewind goes back to the first batch and forgets the sequence length.
  TextDataset fresh = make(11);
  Batch first = fresh.next(2, 32);
  resumed.rewind();
  CHECK(resumed.next(2, 32).inputs == first.inputs);
  CHECK(contains(user_error_of([&] { resumed.next(2, 33); }), "rewind"));
  CHECK(contains(user_error_of([&] { resumed.restore(DataCursor{"shards", saved.values}); }), "'shards'"));
}

TEST_CASE("text ranks read disjoint windows and together one big batch") {
  TextTempDir dir;
  write_plain(dir.file("t.txt"), random_text(100000, 6));
  const int64_t B = 3, L = 40;
  TextDataset whole({dir.file("t.txt")}, WindowOrder::shuffled, 8, 0, 1);
  TextDataset r0({dir.file("t.txt")}, WindowOrder::shuffled, 8, 0, 2), r1({dir.file("t.txt")}, WindowOrder::shuffled, 8, 1, 2);
  std::set<std::vector<int32_t>> seen;
  for (int step = 0; step < 50; ++step) {
    Batch big = whole.next(2 * B, L), a = r0.next(B, L), b = r1.next(B, L);
    for (int64_t j = 0; j < B; ++j) {
      std::vector<int32_t> ra(a.inputs.begin() + j * L, a.inputs.begin() + (j + 1) * L);
      std::vector<int32_t> rb(b.inputs.begin() + j * L, b.inputs.begin() + (j + 1) * L);
      REQUIRE(ra == std::vector<int32_t>(big.inputs.begin() + 2 * j * L, big.inputs.begin() + (2 * j + 1) * L));
      REQUIRE(rb == std::vector<int32_t>(big.inputs.begin() + (2 * j + 1) * L, big.inputs.begin() + (2 * j + 2) * L));
      seen.insert(ra);
      seen.insert(rb);
    }
  }
  CHECK(seen.size() == 50 * 2 * B);  // 300 of 2499 windows: no window read twice
  CHECK(contains(user_error_of([&] { TextDataset d({dir.file("t.txt")}, WindowOrder::shuffled, 8, 2, 2); }), "rank 2"));
}

TEST_CASE("text hold-out keeps the last fraction of each file for validation") {
  TextTempDir dir;
  std::string a = random_text(2000, 7), b = random_text(1000, 8);
  write_plain(dir.file("a.txt"), a);
  write_gzip(dir.file("b.txt.gz"), b);
  DataSpec spec;
  spec.kind = "text";
  spec.path = {dir.file("a.txt"), dir.file("b.txt.gz")};
  spec.val_fraction = 0.25;  // a: last 500 bytes, b: last 250
  auto train = make_dataset(spec, "train");
  auto val = make_dataset(spec, "val");
  CHECK(dynamic_cast<TextDataset&>(*train).total_tokens() == 1500 + 750);
  CHECK(dynamic_cast<TextDataset&>(*val).total_tokens() == 500 + 250);
  // Validation is sequential: a's tail window by window, then b's.
  Batch v = val->next(2, 249);
  CHECK(std::vector<int32_t>(v.inputs.begin(), v.inputs.begin() + 249) == bytes_as_tokens(a, 1500, 249));
  CHECK(std::vector<int32_t>(v.inputs.begin() + 249, v.inputs.end()) == bytes_as_tokens(a, 1749, 249));
  CHECK(val->next(1, 249).inputs == bytes_as_tokens(b, 750, 249));
  // Training reads only the heads: every training window is a substring of a head.
  std::string heads = a.substr(0, 1500) + "\n" + b.substr(0, 750);
  for (int k = 0; k < 20; ++k) {
    Batch t = train->next(4, 30);
    for (int64_t j = 0; j < 4; ++j) {
      std::string w;
      for (int64_t i = 0; i < 30; ++i) w += static_cast<char>(t.inputs[j * 30 + i]);
      w += static_cast<char>(t.targets[j * 30 + 29]);
      REQUIRE(heads.find(w) != std::string::npos);
    }
  }
  // val_min_tokens lengthens short tails.
  spec.val_min_tokens = 600;
  CHECK(dynamic_cast<TextDataset&>(*make_dataset(spec, "val")).total_tokens() == 600 + 600);
  // Separate validation files leave the training files whole.
  spec.val_min_tokens = 0;
  spec.val_path = {dir.file("b.txt.gz")};
  CHECK(dynamic_cast<TextDataset&>(*make_dataset(spec, "train")).total_tokens() == 3000);
  CHECK(dynamic_cast<TextDataset&>(*make_dataset(spec, "val")).total_tokens() == 1000);
  // Errors name the key.
  spec.val_path = {dir.file("missing.txt")};
  std::string msg = user_error_of([&] { make_dataset(spec, "val"); });
  CHECK(contains(msg, "data.val_path"));
  CHECK(contains(msg, "missing.txt"));
  spec.path.clear();
  CHECK(contains(user_error_of([&] { make_dataset(spec, "train"); }), "data.path"));
  spec.kind = "words";
  CHECK(contains(user_error_of([&] { make_dataset(spec, "train"); }), "data.kind"));
}

TEST_SUITE("slow") {
  TEST_CASE("the gcide dictionary opens as byte-level text") {
    const std::string path = "/usr/share/dictd/gcide.dict.dz";
    if (!fs::exists(path)) {
      MESSAGE("skipped: " << path << " is not installed (apt-get install dict-gcide)");
      return;
    }
    auto t0 = std::chrono::steady_clock::now();
    DataSpec spec;
    spec.path = {path};
    auto train = make_dataset(spec, "train");
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE(train->describe() << " opened in " << seconds << " s");
    auto& text = dynamic_cast<TextDataset&>(*train);
    CHECK(text.total_tokens() > 30'000'000);  // decompressed, not the 13.5 MB of the file
    CHECK(seconds < 5.0);
    // The same bytes as zlib's own gzip reader gives (an independent decoder of the format).
    std::vector<unsigned char> all = read_text_file(path, "data.path"), reference;
    gzFile f = gzopen(path.c_str(), "rb");
    REQUIRE(f != nullptr);
    std::vector<unsigned char> chunk(1 << 20);
    for (int got; (got = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()))) > 0;)
      reference.insert(reference.end(), chunk.begin(), chunk.begin() + got);
    gzclose(f);
    CHECK(all == reference);
    CHECK(text.total_tokens() == static_cast<int64_t>(all.size()) - (static_cast<int64_t>(all.size()) + 99) / 100);
    Batch b = train->next(4, 256);
    int64_t printable = 0;
    for (int32_t t : b.inputs) printable += (t >= 32 && t < 127) || t == '\n' || t == '\t';
    CHECK(printable > 0.9 * 4 * 256);  // English text
  }
}
