// Byte-level BPE (data/bpe_tokenizer.h) and the GPT-2 split (data/pretokenize.h) on a
// tokenizer.json small enough to work out by hand. tools/tokenizer_check.py compares real
// tokenizers with Hugging Face's package; these cases run without Python.
#include <doctest/doctest.h>

#include <fstream>

#include "core/random.h"
#include "data/bpe_tokenizer.h"
#include "data/prepare.h"
#include "data/pretokenize.h"
#include "data/token_shards.h"
#include "temp_dir.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

namespace {

std::vector<std::string> split(std::string_view text) {
  std::vector<std::string_view> words;
  gpt2_split(text, words);
  return {words.begin(), words.end()};
}

// Byte-level characters: 'Ġ' is the space (U+0120), 'Ċ' the newline (U+010A). Merges, in
// rank order, and what they make:
//   0 l l -> ll   1 h e -> he   2 he ll -> hell   3 hell o -> hello
//   4 Ġ w -> Ġw   5 o r -> or   6 Ġw or -> Ġwor
// "hello": h e l l o -> h e ll o (rank 0) -> he ll o (1) -> hell o (2) -> hello (3).
// " world": Ġ w o r l d -> Ġw o r l d (4) -> Ġw or l d (5) -> Ġwor l d (6); no l d merge.
constexpr const char* kTinyTokenizer = R"({
  "version": "1.0",
  "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<|endoftext|>": 0, "h": 1, "e": 2, "l": 3, "o": 4, "w": 5, "r": 6, "d": 7, "Ġ": 8,
                      "Ċ": 9, "'": 10, "s": 11, "!": 12, "ll": 13, "he": 14, "hell": 15, "hello": 16,
                      "Ġw": 17, "or": 18, "Ġwor": 19},
            "merges": ["l l", "h e", "he ll", "hell o", "Ġ w", "o r", "Ġw or"]}
})";

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  REQUIRE(at != std::string::npos);
  return s.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("the GPT-2 split: contractions, optional spaces, runs of whitespace") {
  CHECK(split("Hello world's  3.14 !!\n\n  x") ==
        std::vector<std::string>{"Hello", " world", "'s", " ", " 3", ".", "14", " !!", "\n\n ", " x"});
  CHECK(split("don't we'll I'M") == std::vector<std::string>{"don", "'t", " we", "'ll", " I", "'", "M"});
  CHECK(split("a \n") == std::vector<std::string>{"a", " \n"});  // whitespace at the end stays whole
  CHECK(split("x\ny") == std::vector<std::string>{"x", "\n", "y"});
  CHECK(split("").empty());
}

TEST_CASE("the GPT-2 split classifies non-ASCII characters by Unicode category") {
  // é ï (Ll) and 東京 (Lo) are letters, ½ (No) and ٣ (Nd) numbers.
  CHECK(split("café naïve 東京 ½ ٣") == std::vector<std::string>{"café", " naïve", " 東京", " ½", " ٣"});
  // U+3000 and U+00A0 are White_Space; only the ASCII space joins the next word.
  CHECK(split("a\u3000b") == std::vector<std::string>{"a", "\u3000", "b"});
  CHECK(split("a\u00a0\u00a0b") == std::vector<std::string>{"a", "\u00a0", "\u00a0", "b"});
  // — (Pd) and 😀 (So) are other characters; ˈ (Lm) is a letter.
  CHECK(split("a—😀 ˈb") == std::vector<std::string>{"a", "—😀", " ˈb"});
  // A byte that is not UTF-8 is one character of class other, so no byte is lost.
  CHECK(split("a\xff\xfe b") == std::vector<std::string>{"a", "\xff\xfe", " b"});
  CHECK(char_class(U'\u0301') == CharClass::other);  // a combining mark (Mn) is not a letter
  CHECK(char_class(U'Ⅻ') == CharClass::number);      // Nl
  CHECK(char_class(U'\u2029') == CharClass::space);
  CHECK(char_class(0x1C) == CharClass::other);  // Python's isspace() says yes; White_Space no
  // Unicode 16.0, as the tokenizers package's regex engine: Garay (new in 16.0) letter and digit.
  CHECK(char_class(0x10D50) == CharClass::letter);
  CHECK(char_class(0x10D40) == CharClass::number);
  CHECK(char_class(0xE0080) == CharClass::other);  // unassigned
}

TEST_CASE("byte-level BPE on a hand-written tokenizer.json") {
  const BpeTokenizer t = BpeTokenizer::from_json(kTinyTokenizer, "tiny.json");
  CHECK(t.vocab_size() == 20);
  CHECK(t.end_of_text() == 0);
  CHECK(t.token_id("Ġwor") == 19);
  CHECK(t.encode("hello world") == std::vector<int32_t>{16, 19, 3, 7});
  CHECK(t.encode("lll") == std::vector<int32_t>{13, 3});  // the leftmost pair of equal rank merges first
  CHECK(t.encode("hello<|endoftext|>hello") == std::vector<int32_t>{16, 0, 16});
  CHECK(t.encode("he's\n\nworld") == std::vector<int32_t>{14, 10, 11, 9, 9, 5, 18, 3, 7});
  // A byte outside the vocabulary with no unk_token is dropped, as Hugging Face drops it.
  CHECK(t.encode("hez!") == std::vector<int32_t>{14, 12});
  CHECK(t.encode("").empty());

  CHECK(t.decode({16, 19, 3, 7}) == "hello world");
  CHECK(t.decode({16, 0, 9, 999, 12}) == "hello<|endoftext|>\n!");  // 999: no such id, skipped
  const std::string text = "hello world\n\nhe'll sell word's! <|endoftext|>";
  CHECK(t.decode(t.encode(text)) == text);

  // Merges written as [left, right] pairs (tokenizers >= 0.20) read the same.
  const BpeTokenizer pairs = BpeTokenizer::from_json(
      replaced(kTinyTokenizer, R"(["l l", "h e", "he ll", "hell o", "Ġ w", "o r", "Ġw or"])",
               R"([["l", "l"], ["h", "e"], ["he", "ll"], ["hell", "o"], ["Ġ", "w"], ["o", "r"], ["Ġw", "or"]])"),
      "pairs.json");
  CHECK(pairs.encode(text) == t.encode(text));
}

TEST_CASE("tokenizer options: prefix space, ignore_merges, added tokens with lstrip") {
  std::string json = replaced(kTinyTokenizer, R"("add_prefix_space": false)", R"("add_prefix_space": true)");
  BpeTokenizer prefixed = BpeTokenizer::from_json(json, "prefix.json");
  CHECK(prefixed.encode("world") == std::vector<int32_t>{19, 3, 7});  // as " world"
  CHECK(prefixed.encode("hello<|endoftext|>world") == std::vector<int32_t>{8, 16, 0, 19, 3, 7});

  // Without merges, ignore_merges still finds a word that is in the vocabulary.
  json = replaced(kTinyTokenizer, R"("ignore_merges": false)", R"("ignore_merges": true)");
  json = replaced(json, R"(["l l", "h e", "he ll", "hell o", "Ġ w", "o r", "Ġw or"])", "[]");
  BpeTokenizer ignoring = BpeTokenizer::from_json(json, "ignore.json");
  CHECK(ignoring.encode("hello!hell") == std::vector<int32_t>{16, 12, 15});
  CHECK(ignoring.encode("helo") == std::vector<int32_t>{1, 2, 3, 4});

  // lstrip takes the spaces before the token with it; the id comes after the vocabulary's.
  json = replaced(kTinyTokenizer, R"("special": true}])",
                  R"("special": true}, {"id": 20, "content": "!!", "single_word": false, "lstrip": true,
                     "rstrip": false, "normalized": false, "special": true}])");
  BpeTokenizer added = BpeTokenizer::from_json(json, "added.json");
  CHECK(added.vocab_size() == 21);
  CHECK(added.encode("hello  !!world") == std::vector<int32_t>{16, 20, 5, 18, 3, 7});
  CHECK(added.decode({16, 20}) == "hello!!");
}

TEST_CASE("a bad or unsupported tokenizer.json is a UserError naming the file") {
  auto error = [](const std::string& json) {
    return user_error_of([&] { BpeTokenizer::from_json(json, "bad/tokenizer.json"); });
  };
  CHECK(contains(error("{\"model\": "), "'bad/tokenizer.json': not valid JSON"));
  CHECK(contains(error(replaced(kTinyTokenizer, R"("type": "BPE")", R"("type": "WordPiece")")),
                 "model.type = \"WordPiece\" is not supported"));
  CHECK(contains(error(replaced(kTinyTokenizer, R"("Ġw or"])", R"("Ġw ox"])")), "'ox' is not in model.vocab"));
  CHECK(contains(error(replaced(kTinyTokenizer, R"("normalizer": null)", R"("normalizer": {"type": "Lowercase"})")),
                 "normalizer = {\"type\":\"Lowercase\"} is not supported"));
  CHECK(contains(error(replaced(kTinyTokenizer, R"("type": "ByteLevel", "add_prefix_space": false)",
                                R"("type": "Whitespace", "add_prefix_space": false)")),
                 "pre_tokenizer"));
  CHECK(contains(error(replaced(kTinyTokenizer, R"("single_word": false)", R"("single_word": true)")),
                 "added_tokens[0].single_word"));
  CHECK(contains(error(replaced(kTinyTokenizer, R"("byte_fallback": false)", R"("byte_fallback": true)")),
                 "model.byte_fallback"));
  CHECK(contains(error("[1, 2]"), "expected a JSON object"));
  CHECK(contains(user_error_of([] { BpeTokenizer::from_file("/nonexistent/tokenizer.json"); }),
                 "'/nonexistent/tokenizer.json': cannot open"));
}

TEST_CASE("the GPT-2 split is unchanged by a cut at a safe split point, and only there") {
  const char* parts[] = {"ab", " cd", "\n", "\n\n", " \n", "  ", "\t", "'s", "!", "12", "\u3000", "é", "x\ny", "\n "};
  Generator gen(3);
  std::string text;
  while (text.size() < 5000) text += parts[gen.below(std::size(parts))];
  const auto whole = split(text);
  int safe = 0, unsafe_differs = 0;
  for (size_t p = 1; p < text.size(); ++p) {
    if (text[p - 1] != '\n') continue;
    auto halves = split(std::string_view(text).substr(0, p));
    const auto second = split(std::string_view(text).substr(p));
    halves.insert(halves.end(), second.begin(), second.end());
    if (is_safe_split_point(text, p)) {
      ++safe;
      CHECK(halves == whole);
    } else {
      unsafe_differs += halves != whole;
    }
  }
  CHECK(safe > 20);
  CHECK(unsafe_differs > 20);  // the other newlines are not safe: the rule is needed
}

TEST_CASE("encode_documents on several threads equals encode, long documents cut at safe points") {
  const BpeTokenizer t = BpeTokenizer::from_json(kTinyTokenizer, "tiny.json");
  // Long documents (several parallel pieces each) of words, spaces and newlines in every
  // arrangement the safe split points must get right.
  const char* parts[] = {"hello", " world", "\n", "\n\n", " \n", "  ", "lll", "'s", "!", "<|endoftext|>", "d\nd", "w"};
  Generator gen(7);
  std::vector<std::string> docs(3);
  for (auto& d : docs)
    while (d.size() < 700'000) d += parts[gen.below(std::size(parts))];
  docs.push_back("");
  docs.push_back("hello");
  std::vector<std::string_view> views(docs.begin(), docs.end());
  const auto all = t.encode_documents(views, 3);
  REQUIRE(all.size() == docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    CHECK(all[i] == t.encode(docs[i]));
    CHECK(t.decode(all[i]) == docs[i]);
  }
  int safe = 0;
  for (size_t p = 1; p < docs[0].size(); ++p) safe += is_safe_split_point(docs[0], p);
  CHECK(safe > 1000);  // the documents do get cut
}

TEST_CASE("prepare with a tokenizer: <|endoftext|> before each document's part, the hold-out on tokens") {
  testing::TempDir dir("prepare_tokenizer");
  const std::string tok_path = dir.file("tokenizer.json");
  std::ofstream(tok_path) << kTinyTokenizer;
  std::ofstream(dir.file("a.txt")) << "hello world hello world hello";
  std::ofstream(dir.file("b.txt")) << "he'll\nsell";
  const BpeTokenizer t = BpeTokenizer::from_file(tok_path);
  PrepareSummary s =
      prepare_tokenized_shards({dir.file("a.txt"), dir.file("b.txt")}, dir.file("out"), t, 0.25, 1000, -1, 2);
  const std::vector<int32_t> a = t.encode("hello world hello world hello"), b = t.encode("he'll\nsell");
  // a: hello Ġwor l d Ġ hello Ġwor l d Ġ hello, tail ceil(11 / 4) = 3; b: he ' ll Ċ s e ll, tail 2.
  REQUIRE(a == std::vector<int32_t>{16, 19, 3, 7, 8, 16, 19, 3, 7, 8, 16});
  REQUIRE(b == std::vector<int32_t>{14, 10, 13, 9, 11, 2, 13});
  auto cat = [](std::vector<int32_t> x, const std::vector<int32_t>& y) {
    x.insert(x.end(), y.begin(), y.end());
    return x;
  };
  std::vector<int32_t> train = cat(cat({0}, {a.begin(), a.end() - 3}), cat({0}, {b.begin(), b.end() - 2}));
  std::vector<int32_t> val = cat(cat({0}, {a.end() - 3, a.end()}), cat({0}, {b.end() - 2, b.end()}));
  REQUIRE(s.train_files.size() == 1);
  REQUIRE(s.val_files.size() == 1);
  CHECK(read_token_shard(s.train_files[0]) == train);
  CHECK(read_token_shard(s.val_files[0]) == val);
  TokenShard shard(s.train_files[0]);
  CHECK(shard.vocab_size() == 20);
  CHECK(shard.eot_token() == 0);
  CHECK_FALSE(shard.byte_level());
  CHECK(contains(s.describe(), "preceded by token 0"));
  CHECK(contains(s.describe(), "vocabulary 20"));
  CHECK(contains(
      user_error_of([&] { prepare_tokenized_shards({dir.file("a.txt")}, dir.file("out2"), t, 0.1, 1000, 20); }),
      "--eot: 20 is not a token id"));
}
