// The GPT-2 pre-tokenizer split, hand-coded: the pattern
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// that GPT-2, GPT-NeoX and Hugging Face's ByteLevel pre-tokenizer cut text into words with
// before byte-level BPE (data/bpe_tokenizer.h). The alternatives are tried in order at each
// position, as a backtracking regex engine does; `\s+(?!\S)` gives a whitespace run before a
// non-space character all but its last character, which then joins the word after it.
//
// Characters are Unicode code points decoded from UTF-8 and classified by the tables in
// data/unicode_tables.inc: \p{L} is general category L (Lu Ll Lt Lm Lo), \p{N} is N (Nd Nl
// No), \s is the White_Space property, as in Oniguruma, the engine Hugging Face's tokenizers
// uses. The tables come from Unicode 16.0, the version of that engine in tokenizers 0.23
// (tools/gen_unicode_tables.py regenerates them); a code point assigned later is "other". A byte that does not begin a valid UTF-8
// sequence (or a truncated, overlong or surrogate one) is one character of class "other",
// so any bytes split and every byte still reaches the BPE; text the Python package can read
// (valid UTF-8) never contains one.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace ssmtrain {

enum class CharClass : uint8_t { letter, number, space, other };

CharClass char_class(char32_t cp);

// Decodes the code point at text[pos]; `length` receives its byte count (1 for an invalid
// byte, which decodes as 0xFFFFFFFF, class "other").
char32_t decode_utf8(std::string_view text, size_t pos, size_t& length);

// Appends the words of `text` to `words` (views into text, in order, together exactly text).
void gpt2_split(std::string_view text, std::vector<std::string_view>& words);

// Whether the GPT-2 split of text cut at `pos` (0 < pos < size) equals the split of the two
// halves, so long texts can be split in parallel. True where text[pos - 1] is '\n' between
// two printable ASCII characters: every match ends before the newline, the newline is a
// word of its own either way, and no match looks back.
bool is_safe_split_point(std::string_view text, size_t pos);

}  // namespace ssmtrain
