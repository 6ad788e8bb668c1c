#include "data/prepare.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "data/sampler.h"
#include "data/text.h"
#include "data/token_shards.h"

namespace ssmtrain {

namespace fs = std::filesystem;

namespace {

// Writes a stream of bytes as numbered shards <dir>/<prefix>_NNNNNN.bin of at most
// shard_tokens tokens each; eot >= 0 is recorded in their headers.
class ShardSeries {
 public:
  ShardSeries(std::string dir, std::string prefix, int64_t shard_tokens, int64_t eot)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), shard_tokens_(shard_tokens), eot_(eot) {}

  // One document: the end-of-text byte (when there is one), then its bytes.
  void append_document(const unsigned char* bytes, int64_t count) {
    if (count == 0) return;
    if (eot_ >= 0) {
      const unsigned char eot = static_cast<unsigned char>(eot_);
      append(&eot, 1);
    }
    append(bytes, count);
  }

  void append(const unsigned char* bytes, int64_t count) {
    while (count > 0) {
      if (!writer_) {
        char name[64];
        std::snprintf(name, sizeof(name), "%s_%06zu.bin", prefix_.c_str(), files_.size());
        writer_ = std::make_unique<TokenShardWriter>((fs::path(dir_) / name).string(), 256, /*byte_level=*/true, eot_);
      }
      int64_t take = std::min(count, shard_tokens_ - writer_->num_tokens());
      writer_->append_bytes(bytes, take);
      bytes += take, count -= take, tokens_ += take;
      if (writer_->num_tokens() == shard_tokens_) finish_shard();
    }
  }

  void finish() {
    if (writer_) finish_shard();
  }

  const std::vector<std::string>& files() const { return files_; }
  int64_t tokens() const { return tokens_; }

 private:
  void finish_shard() {
    writer_->commit();
    files_.push_back(writer_->path());
    writer_.reset();
  }

  std::string dir_, prefix_;
  int64_t shard_tokens_, eot_;
  std::unique_ptr<TokenShardWriter> writer_;
  std::vector<std::string> files_;
  int64_t tokens_ = 0;
};

}  // namespace

PrepareSummary prepare_text_shards(const std::vector<std::string>& inputs, const std::string& output_dir,
                                   double val_fraction, int64_t shard_tokens, int64_t eot_byte) {
  SSMT_CHECK(!inputs.empty(), "--input: expects at least one text file (plain or .gz)");
  SSMT_CHECK(!output_dir.empty(), "--output: expects a directory");
  SSMT_CHECK(val_fraction >= 0 && val_fraction < 1, "--val-fraction: ", val_fraction, " is outside [0, 1)");
  SSMT_CHECK(shard_tokens >= 1 && shard_tokens <= INT32_MAX, "--shard-tokens: ", shard_tokens,
             " is outside [1, 2^31 - 1] (a shard header counts its tokens in an int32)");
  SSMT_CHECK(eot_byte >= -1 && eot_byte <= 255, "--eot: ", eot_byte,
             " is not a byte (0..255); the shards are byte-level");
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  SSMT_CHECK(fs::is_directory(output_dir), "--output: cannot create the directory '", output_dir, "'",
             ec ? ": " + ec.message() : std::string());

  HoldOut train_part{HoldOut::Part::head, val_fraction, 0}, val_part{HoldOut::Part::tail, val_fraction, 0};
  if (val_fraction == 0) train_part = HoldOut{};
  PrepareSummary summary;
  ShardSeries train(output_dir, "train", shard_tokens, eot_byte), val(output_dir, "val", shard_tokens, eot_byte);
  for (const auto& input : inputs) {
    std::vector<unsigned char> text = read_text_file(input, "--input");
    auto n = static_cast<int64_t>(text.size());
    if (eot_byte >= 0) {
      const int64_t count = std::count(text.begin(), text.end(), static_cast<unsigned char>(eot_byte));
      SSMT_CHECK(count == 0, "--eot: byte ", eot_byte, " occurs ", count, " time(s) in '", input, "'",
                 ", where it would start documents; choose a byte the text does not contain (0 for text files)");
    }
    train.append_document(text.data() + train_part.begin(n), train_part.size(n));
    if (val_fraction > 0) val.append_document(text.data() + val_part.begin(n), val_part.size(n));
    summary.input_files += 1;
    summary.input_bytes += n;
  }
  train.finish();
  val.finish();
  summary.train_files = train.files();
  summary.val_files = val.files();
  summary.train_tokens = train.tokens();
  summary.val_tokens = val.tokens();
  summary.eot_byte = eot_byte;

  // Shards of an earlier run that this one did not overwrite would otherwise join the data.
  std::set<std::string> written(summary.train_files.begin(), summary.train_files.end());
  written.insert(summary.val_files.begin(), summary.val_files.end());
  static const std::regex ours("(train|val)_[0-9]{6}\\.bin");
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, ours) && !written.count(entry.path().string())) {
      fs::remove(entry.path(), ec);
      SSMT_CHECK(!ec, "--output: cannot remove the stale shard '", entry.path().string(), "': ", ec.message());
      summary.removed_files.push_back(entry.path().string());
    }
  }
  std::sort(summary.removed_files.begin(), summary.removed_files.end());
  return summary;
}

std::string PrepareSummary::describe() const {
  std::ostringstream os;
  os << "read " << input_files << " file(s), " << input_bytes << " bytes\n";
  os << "train: " << train_tokens << " tokens in " << train_files.size() << " shard(s)";
  if (!train_files.empty()) os << " (" << train_files.front() << (train_files.size() > 1 ? " ..." : "") << ")";
  os << "\nval:   " << val_tokens << " tokens in " << val_files.size() << " shard(s)";
  if (!val_files.empty()) os << " (" << val_files.front() << (val_files.size() > 1 ? " ..." : "") << ")";
  os << "\n";
  if (eot_byte >= 0) os << "each document (input file part) is preceded by byte " << eot_byte << "\n";
  if (!removed_files.empty()) os << "removed " << removed_files.size() << " stale shard(s) of an earlier run\n";
  return os.str();
}

}  // namespace ssmtrain
