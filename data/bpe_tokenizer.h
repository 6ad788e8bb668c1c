// Byte-level BPE, the tokenizer of GPT-2 and GPT-NeoX (the vocabulary the Mamba models use),
// read from a Hugging Face tokenizer.json; ids equal those of the `tokenizers` package for
// every file it accepts (tools/tokenizer_check.py compares them).
//
// Encoding a text, as Hugging Face's pipeline does:
//  1. added tokens (`added_tokens`, e.g. <|endoftext|>) are cut out where they occur
//     literally, leftmost-longest, those with `normalized: false` first, then the others in
//     the pieces between; `lstrip` / `rstrip` take the whitespace beside a match with it;
//  2. the pieces between are split into words by the GPT-2 pattern (data/pretokenize.h),
//     after a space is put before each piece that does not start with one when the
//     pre-tokenizer's `add_prefix_space` is set;
//  3. each word's UTF-8 bytes become the byte-level symbols (GPT-2's bytes_to_unicode
//     characters) and pairs are merged lowest merge rank first, leftmost among equal ranks,
//     until no pair of neighbours has a merge; with `ignore_merges`, a word that is itself
//     in the vocabulary is that one token.
// Decoding maps every token back to its bytes (added tokens to their content), so
// decode(encode(text)) == text for any bytes.
//
// Accepted: model BPE (vocab, merges as "a b" strings or [a, b] pairs, unk_token, no
// dropout, no subword prefix or suffix, no byte fallback); pre_tokenizer ByteLevel
// (add_prefix_space, use_regex); decoder ByteLevel or none; normalizer none or NFC, which is
// not applied: text is taken to be NFC already, as nearly all text on disk is (for ASCII and
// precomposed text NFC changes nothing). The post_processor (templates that add BOS/EOS),
// truncation and padding are ignored: callers place document separators themselves.
// Anything else is a UserError naming the file and the field.
//
// Speed: a merge table keyed by the pair of ids, a per-thread cache of encoded words, and
// encode_documents, which encodes documents (and pieces of long documents, cut where the
// split provably does not change: is_safe_split_point) on several threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ssmtrain {

struct BpeWordCache;  // encoded words of one thread (data/bpe_tokenizer.cpp)

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, normalized = false, lstrip = false, rstrip = false;
};

class BpeTokenizer {
 public:
  // UserError naming `path` for a missing, unreadable, malformed or unsupported file.
  static BpeTokenizer from_file(const std::string& path);
  // `source` names the text in errors.
  static BpeTokenizer from_json(const std::string& json_text, const std::string& source);

  // One more than the largest id of the vocabulary and the added tokens (Hugging Face's
  // get_vocab_size(with_added_tokens=True) when ids are dense).
  int64_t vocab_size() const { return static_cast<int64_t>(id_bytes_.size()); }
  // The id of a token by its text (an added token's content or a vocabulary entry in
  // byte-level characters), or -1.
  int32_t token_id(const std::string& token) const;
  // <|endoftext|>'s id, or -1 when the tokenizer has none.
  int32_t end_of_text() const { return token_id("<|endoftext|>"); }

  std::vector<int32_t> encode(std::string_view text) const;
  // Each document encoded alone (as encode does) on up to `threads` threads (0: one per
  // hardware thread).
  std::vector<std::vector<int32_t>> encode_documents(const std::vector<std::string_view>& documents,
                                                     int threads = 0) const;
  // The bytes of the tokens; ids outside the vocabulary are skipped, as Hugging Face does.
  std::string decode(const std::vector<int32_t>& ids) const;

  // One line: vocabulary size, merges, added tokens, options that are set.
  std::string describe() const;

 private:
  struct Piece {
    std::string_view text;  // a run of text to pre-tokenize, when id < 0
    int32_t id = -1;        // an added token
  };
  void split_added(std::string_view text, std::vector<Piece>& pieces) const;
  // Encodes a text piece (no added tokens in it); `prefix` applies add_prefix_space.
  void encode_piece(std::string_view text, bool prefix, BpeWordCache& cache, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  // vocabulary: byte-level token text -> id, in an open-addressing table
  std::vector<std::string> vocab_keys_;
  std::vector<int32_t> vocab_ids_;
  std::vector<int32_t> vocab_slots_;  // index into vocab_keys_, -1 = empty
  // merges: (left id, right id) -> (rank, merged id)
  std::vector<uint64_t> merge_keys_;
  std::vector<std::pair<int32_t, int32_t>> merge_values_;
  int64_t num_merges_ = 0;
  int32_t byte_ids_[256];              // the id of each byte's symbol, -1 = not in the vocabulary
  std::vector<std::string> id_bytes_;  // decoding: id -> bytes
  std::vector<AddedToken> added_;
  std::vector<std::vector<int>> added_by_first_byte_[2];  // [normalized]: indices into added_, longest first
  int32_t unk_id_ = -1;
  bool ignore_merges_ = false, add_prefix_space_ = false, use_regex_ = true;
  std::string normalizer_;  // "" or "NFC" (not applied; see above)
  std::string source_;

  int32_t find_vocab(std::string_view key) const;
  int64_t merge_slot(uint64_t key) const;
};

}  // namespace ssmtrain
