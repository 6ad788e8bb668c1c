#include "data/prepare.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <type_traits>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/sampler.h"
#include "data/text.h"
#include "data/token_shards.h"

namespace ssmtrain {

namespace fs = std::filesystem;

namespace {

// Writes a stream of tokens as numbered shards <dir>/<prefix>_NNNNNN.bin of at most
// shard_tokens tokens each; eot >= 0 is recorded in their headers.
class ShardSeries {
 public:
  ShardSeries(std::string dir, std::string prefix, int64_t shard_tokens, int64_t vocab, bool byte_level, int64_t eot)
      : dir_(std::move(dir)),
        prefix_(std::move(prefix)),
        shard_tokens_(shard_tokens),
        vocab_(vocab),
        byte_level_(byte_level),
        eot_(eot) {}

  // One document: the end-of-text token (when there is one), then its tokens.
  template <typename Token>
  void append_document(const Token* tokens, int64_t count) {
    if (count == 0) return;
    if (eot_ >= 0) {
      const auto eot = static_cast<Token>(eot_);
      append(&eot, 1);
    }
    append(tokens, count);
  }

  template <typename Token>
  void append(const Token* tokens, int64_t count) {
    while (count > 0) {
      if (!writer_) {
        char name[64];
        std::snprintf(name, sizeof(name), "%s_%06zu.bin", prefix_.c_str(), files_.size());
        writer_ = std::make_unique<TokenShardWriter>((fs::path(dir_) / name).string(), vocab_, byte_level_, eot_);
      }
      int64_t take = std::min(count, shard_tokens_ - writer_->num_tokens());
      if constexpr (std::is_same_v<Token, unsigned char>) {
        writer_->append_bytes(tokens, take);
      } else {
        writer_->append(tokens, take);
      }
      tokens += take, count -= take, tokens_ += take;
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
  int64_t shard_tokens_, vocab_;
  bool byte_level_;
  int64_t eot_;
  std::unique_ptr<TokenShardWriter> writer_;
  std::vector<std::string> files_;
  int64_t tokens_ = 0;
};

}  // namespace

namespace {

void check_common_options(const std::vector<std::string>& inputs, const std::string& output_dir, double val_fraction,
                          int64_t shard_tokens) {
  SSMT_CHECK(!inputs.empty(), "--input: expects at least one text file (plain or .gz)");
  SSMT_CHECK(!output_dir.empty(), "--output: expects a directory");
  SSMT_CHECK(val_fraction >= 0 && val_fraction < 1, "--val-fraction: ", val_fraction, " is outside [0, 1)");
  SSMT_CHECK(shard_tokens >= 1 && shard_tokens <= INT32_MAX, "--shard-tokens: ", shard_tokens,
             " is outside [1, 2^31 - 1] (a shard header counts its tokens in an int32)");
}

void create_output_dir(const std::string& output_dir) {
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  SSMT_CHECK(fs::is_directory(output_dir), "--output: cannot create the directory '", output_dir, "'",
             ec ? ": " + ec.message() : std::string());
}

// The training head and validation tail of each document (the hold-out rule), in shards.
struct SplitWriter {
  HoldOut train_part, val_part;
  double val_fraction;
  ShardSeries train, val;

  SplitWriter(const std::string& dir, double f, int64_t shard_tokens, int64_t vocab, bool byte_level, int64_t eot)
      : train_part{HoldOut::Part::head, f, 0},
        val_part{HoldOut::Part::tail, f, 0},
        val_fraction(f),
        train(dir, "train", shard_tokens, vocab, byte_level, eot),
        val(dir, "val", shard_tokens, vocab, byte_level, eot) {
    if (f == 0) train_part = HoldOut{};
  }

  template <typename Token>
  void document(const Token* tokens, int64_t n) {
    train.append_document(tokens + train_part.begin(n), train_part.size(n));
    if (val_fraction > 0) val.append_document(tokens + val_part.begin(n), val_part.size(n));
  }

  // Completes the shards, records them in `summary` and removes the stale ones.
  void finish(const std::string& output_dir, PrepareSummary& summary) {
    train.finish();
    val.finish();
    summary.train_files = train.files();
    summary.val_files = val.files();
    summary.train_tokens = train.tokens();
    summary.val_tokens = val.tokens();

    // Shards of an earlier run that this one did not overwrite would otherwise join the data.
    std::set<std::string> written(summary.train_files.begin(), summary.train_files.end());
    written.insert(summary.val_files.begin(), summary.val_files.end());
    static const std::regex ours("(train|val)_[0-9]{6}\\.bin");
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(output_dir)) {
      std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && std::regex_match(name, ours) && !written.count(entry.path().string())) {
        fs::remove(entry.path(), ec);
        SSMT_CHECK(!ec, "--output: cannot remove the stale shard '", entry.path().string(), "': ", ec.message());
        summary.removed_files.push_back(entry.path().string());
      }
    }
    std::sort(summary.removed_files.begin(), summary.removed_files.end());
  }
};

}  // namespace

PrepareSummary prepare_text_shards(const std::vector<std::string>& inputs, const std::string& output_dir,
                                   double val_fraction, int64_t shard_tokens, int64_t eot_byte) {
  check_common_options(inputs, output_dir, val_fraction, shard_tokens);
  SSMT_CHECK(eot_byte >= -1 && eot_byte <= 255, "--eot: ", eot_byte,
             " is not a byte (0..255); the shards are byte-level");
  create_output_dir(output_dir);

  PrepareSummary summary;
  SplitWriter out(output_dir, val_fraction, shard_tokens, 256, /*byte_level=*/true, eot_byte);
  for (const auto& input : inputs) {
    std::vector<unsigned char> text = read_text_file(input, "--input");
    auto n = static_cast<int64_t>(text.size());
    if (eot_byte >= 0) {
      const int64_t count = std::count(text.begin(), text.end(), static_cast<unsigned char>(eot_byte));
      SSMT_CHECK(count == 0, "--eot: byte ", eot_byte, " occurs ", count, " time(s) in '", input, "'",
                 ", where it would start documents; choose a byte the text does not contain (0 for text files)");
    }
    out.document(text.data(), n);
    summary.input_files += 1;
    summary.input_bytes += n;
  }
  summary.eot_token = eot_byte;
  out.finish(output_dir, summary);
  return summary;
}

PrepareSummary prepare_tokenized_shards(const std::vector<std::string>& inputs, const std::string& output_dir,
                                        const BpeTokenizer& tokenizer, double val_fraction, int64_t shard_tokens,
                                        int64_t eot_token, int threads) {
  check_common_options(inputs, output_dir, val_fraction, shard_tokens);
  if (eot_token < 0) eot_token = tokenizer.end_of_text();
  SSMT_CHECK(eot_token >= -1 && eot_token < tokenizer.vocab_size(), "--eot: ", eot_token,
             " is not a token id of the tokenizer (0..", tokenizer.vocab_size() - 1, ")");
  create_output_dir(output_dir);

  PrepareSummary summary;
  summary.tokenizer = tokenizer.describe();
  SplitWriter out(output_dir, val_fraction, shard_tokens, tokenizer.vocab_size(), /*byte_level=*/false, eot_token);
  // Files are read and encoded in groups of about kGroupBytes, so memory stays bounded
  // however many files there are and each group keeps every thread busy.
  constexpr int64_t kGroupBytes = int64_t{256} << 20;
  for (size_t first = 0; first < inputs.size();) {
    std::vector<std::vector<unsigned char>> texts;
    int64_t bytes = 0;
    size_t last = first;
    for (; last < inputs.size() && (last == first || bytes < kGroupBytes); ++last) {
      texts.push_back(read_text_file(inputs[last], "--input"));
      bytes += static_cast<int64_t>(texts.back().size());
    }
    std::vector<std::string_view> docs;
    for (const auto& t : texts) docs.emplace_back(reinterpret_cast<const char*>(t.data()), t.size());
    std::vector<std::vector<int32_t>> ids = tokenizer.encode_documents(docs, threads);
    for (const auto& d : ids) out.document(d.data(), static_cast<int64_t>(d.size()));
    summary.input_files += static_cast<int64_t>(last - first);
    summary.input_bytes += bytes;
    first = last;
  }
  summary.eot_token = eot_token;
  out.finish(output_dir, summary);
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
  if (!tokenizer.empty()) os << "tokenizer: " << tokenizer << "\n";
  if (eot_token >= 0)
    os << "each document (input file part) is preceded by " << (tokenizer.empty() ? "byte " : "token ") << eot_token
       << "\n";
  if (!removed_files.empty()) os << "removed " << removed_files.size() << " stale shard(s) of an earlier run\n";
  return os.str();
}

}  // namespace ssmtrain
