// A small JSON value with a strict reader and a writer, for the interchange files of
// train/interop.h: Hugging Face's config.json and the safetensors header. The metrics
// records keep their own line writer (train/metrics.h); this is the one place that reads
// JSON written by other programs.
//
// Reading accepts standard JSON plus the non-finite literals NaN, Infinity and -Infinity
// that Python's json module writes (transformers puts `time_step_limit: [0.0, Infinity]`
// into Mamba-2 configs). Objects keep their keys in file order, so a written file reads
// in the order a person expects.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ssmtrain {

class JsonValue {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  JsonValue() = default;
  static JsonValue boolean(bool b);
  static JsonValue number(double v);
  static JsonValue string(std::string s);
  static JsonValue array();
  static JsonValue object();

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_number() const { return kind_ == Kind::number; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_object() const { return kind_ == Kind::object; }
  bool is_array() const { return kind_ == Kind::array; }

  // Typed access; `what` names the value (file and key) in the UserError of a wrong kind.
  bool as_bool(const std::string& what) const;
  double as_number(const std::string& what) const;
  // A number that is an integer exactly (JSON has one number type).
  int64_t as_int(const std::string& what) const;
  const std::string& as_string(const std::string& what) const;
  const std::vector<JsonValue>& as_array(const std::string& what) const;
  const std::vector<std::pair<std::string, JsonValue>>& as_object(const std::string& what) const;

  // Objects: the member `key`, or nullptr.
  const JsonValue* find(const std::string& key) const;
  // Objects: sets (or replaces) a member; arrays: appends. Returns *this for chaining.
  JsonValue& set(const std::string& key, JsonValue v);
  JsonValue& push(JsonValue v);

  // Compact when indent < 0, else pretty-printed with that many spaces per level. Numbers
  // that are integers print without a fraction; others with 17 significant digits.
  std::string dump(int indent = -1) const;

 private:
  void dump_to(std::string& out, int indent, int level) const;
  Kind kind_ = Kind::null;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::vector<std::pair<std::string, JsonValue>> object_;
};

// Parses `text` as one JSON value; a syntax error is a UserError naming `source` (the file)
// and the byte offset where it stopped.
JsonValue parse_json(const std::string& text, const std::string& source);

}  // namespace ssmtrain
