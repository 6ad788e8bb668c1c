// The visitors over the key declarations of train/config.h: the YAML reader (files and
// key.path=value overrides), the rule checker, the dumper, the key lister and the
// reference generator; then the cross-key checks and the resolved_* helpers. The model
// section's keys come from ssm/model.h and the mixer registry; these visitors treat them
// like any other.
#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"

namespace ssmtrain {

std::string device_problem(const std::string& device) {
  if (device == "cpu" || device == "cuda") return "";
  const std::string prefix = "cuda:";
  if (device.rfind(prefix, 0) == 0 && device.size() > prefix.size() && device.size() <= prefix.size() + 4 &&
      std::all_of(device.begin() + prefix.size(), device.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return "";
  return "expected cpu, cuda or cuda:N (N a GPU index), got '" + device + "'";
}

namespace {

// ---- Text helpers ------------------------------------------------------------------------

// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
// neighbouring characters each cost 1 ("d_modle" is 1 away from "d_model").
size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

std::string leaf_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

// The candidate closest to `word` when it is close enough to be a likely typo, else "".
// Closeness is judged against the last dotted component, so long paths do not admit more.
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  const size_t limit = std::min<size_t>(3, 1 + leaf_of(word).size() / 4);
  std::string best;
  size_t best_d = limit + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  if (!best.empty()) return best;
  // A known key name under another section (optim.d_model -> model.d_model).
  for (const auto& c : candidates)
    if (leaf_of(c) == leaf_of(word) && c.find('.') != std::string::npos) return c;
  return "";
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string c = closest(word, candidates);
  return c.empty() ? "" : " (did you mean '" + c + "'?)";
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

// ---- Values: type names, formatting (YAML text), parsing ---------------------------------

const char* type_name(const int64_t&) { return "integer"; }
const char* type_name(const double&) { return "number"; }
const char* type_name(const bool&) { return "boolean"; }
const char* type_name(const std::string&) { return "string"; }
const char* type_name(const std::vector<std::string>&) { return "list of strings"; }
const char* type_name(const std::vector<double>&) { return "list of numbers"; }

std::string format(int64_t v) { return std::to_string(v); }
std::string format(bool v) { return v ? "true" : "false"; }
std::string format(double v) { return format_number(v); }

bool plain_safe(const std::string& s) {
  static const std::set<std::string> reserved = {"~",    "null", "Null",  "NULL",  "true",
                                                 "True", "TRUE", "false", "False", "FALSE"};
  if (s.empty() || reserved.count(s)) return false;
  auto ok = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '/' || c == '-' || c == '+';
  };
  return std::all_of(s.begin(), s.end(), ok) && s.front() != '-';
}

// A string as a YAML scalar: plain when that reads back unchanged, else double-quoted.
std::string format(const std::string& s) {
  if (plain_safe(s)) return s;
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\', out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

template <class E>
std::string format(const std::vector<E>& v) {
  std::vector<std::string> parts;
  for (const auto& e : v) parts.push_back(format(e));
  return "[" + join(parts, ", ") + "]";
}

std::string describe(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "an empty value";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a map";
  return "'" + n.Scalar() + "'";
}

bool parse_number(const std::string& text, double& out) {
  std::string s = text;
  if (!s.empty() && s[0] == '+') s.erase(0, 1);
  if (s.empty() || s[0] == '+') return false;
  // YAML spellings of infinity and NaN are rejected below with every other non-finite value.
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && std::isfinite(out);
}

// "" on success, else what was expected.
std::string parse_scalar(const YAML::Node& n, int64_t& out) {
  const char* expected = "expected an integer";
  if (!n.IsScalar()) return std::string(expected) + ", got " + describe(n);
  std::string s = n.Scalar();
  if (!s.empty() && s[0] == '+') s.erase(0, 1);
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  if (r.ec == std::errc() && r.ptr == s.data() + s.size()) return "";
  // Whole numbers in exponent form (tokens: 2e9) are integers too; 1.5 is not.
  double x;
  if (parse_number(n.Scalar(), x) && x == std::floor(x) && std::fabs(x) < 9.2e18) {
    out = static_cast<int64_t>(x);
    return "";
  }
  return std::string(expected) + ", got " + describe(n);
}

std::string parse_scalar(const YAML::Node& n, double& out) {
  if (n.IsScalar() && parse_number(n.Scalar(), out)) return "";
  return "expected a number, got " + describe(n);
}

std::string parse_scalar(const YAML::Node& n, bool& out) {
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    if (s == "true" || s == "True" || s == "TRUE") return out = true, "";
    if (s == "false" || s == "False" || s == "FALSE") return out = false, "";
  }
  return "expected true or false, got " + describe(n);
}

std::string parse_scalar(const YAML::Node& n, std::string& out) {
  if (n.IsNull()) return out.clear(), "";
  if (n.IsScalar()) return out = n.Scalar(), "";
  return "expected a string, got " + describe(n);
}

// ---- Rules ------------------------------------------------------------------------------

std::string bounds_text(const Rule& r) {
  std::vector<std::string> parts;
  if (r.min) parts.push_back((r.min_open ? "> " : ">= ") + format(*r.min));
  if (r.max) parts.push_back((r.max_open ? "< " : "<= ") + format(*r.max));
  return join(parts, " and ");
}

std::string choices_text(const Rule& r) { return "{" + join(r.choices, ", ") + "}"; }

// What is wrong with one scalar value under `rule` ("" when nothing), as "KEY must be ...".
std::string element_problem(const std::string& key, double x, const std::string& text, const Rule& r) {
  const bool low = r.min && (x < *r.min || (r.min_open && x == *r.min));
  const bool high = r.max && (x > *r.max || (r.max_open && x == *r.max));
  if (low || high) return key + " must be " + bounds_text(r) + ", got " + text;
  if (r.check) {
    const std::string p = r.check(text);
    if (!p.empty()) return key + ": " + p;
  }
  return "";
}
std::string element_problem(const std::string& key, int64_t v, const Rule& r) {
  return element_problem(key, static_cast<double>(v), format(v), r);
}
std::string element_problem(const std::string& key, double v, const Rule& r) {
  return element_problem(key, v, format(v), r);
}
std::string element_problem(const std::string& key, bool, const Rule&) { return ""; }
std::string element_problem(const std::string& key, const std::string& v, const Rule& r) {
  if (!r.choices.empty() && std::find(r.choices.begin(), r.choices.end(), v) == r.choices.end())
    return key + " must be one of " + choices_text(r) + ", got '" + v + "'" + did_you_mean(v, r.choices);
  if (r.check) {
    const std::string p = r.check(v);
    if (!p.empty()) return key + ": " + p;
  }
  return "";
}

// Throws a UserError for the first rule `value` breaks. `where(i)` is the location prefix
// of list element i (-1: the whole value).
template <class T>
void check_rule(const std::string& key, const T& value, const Rule& rule,
                const std::function<std::string(int64_t)>& where) {
  const std::string p = element_problem(key, value, rule);
  if (!p.empty()) throw UserError(where(-1) + p);
}
template <class E>
void check_rule(const std::string& key, const std::vector<E>& value, const Rule& rule,
                const std::function<std::string(int64_t)>& where) {
  if (rule.length >= 0 && static_cast<int64_t>(value.size()) != rule.length)
    throw UserError(where(-1) + key + " must have " + std::to_string(rule.length) + " elements, got " +
                    std::to_string(value.size()) + " (" + format(value) + ")");
  for (size_t i = 0; i < value.size(); ++i) {
    const std::string p = element_problem(key + "[" + std::to_string(i) + "]", value[i], rule);
    if (!p.empty()) throw UserError(where(static_cast<int64_t>(i)) + p);
  }
}

// ---- Reading YAML -------------------------------------------------------------------------

// Where values come from: a file (messages start "file:line: ") or one override (messages
// start "override 'key=value': ").
struct Source {
  std::string file;
  std::string override_text;

  std::string where(const YAML::Node& n) const {
    if (!override_text.empty()) return "override '" + override_text + "': ";
    if (n.IsDefined()) {
      const YAML::Mark m = n.Mark();
      if (m.line >= 0) return file + ":" + std::to_string(m.line + 1) + ": ";
    }
    return file + ": ";
  }
  // The value's own line, or its key's when the value is empty (its mark may be elsewhere).
  std::string where(const YAML::Node& key, const YAML::Node& value) const {
    return where(value.IsDefined() && !value.IsNull() ? value : key);
  }
};

std::vector<std::string> known_paths();

template <class T>
void read_value(const std::string& key, const YAML::Node& key_node, const YAML::Node& node, T& out, const Rule& rule,
                const Source& src) {
  T v{};
  const std::string p = parse_scalar(node, v);
  if (!p.empty()) throw UserError(src.where(key_node, node) + key + ": " + p);
  check_rule(key, v, rule, [&](int64_t) { return src.where(key_node, node); });
  out = std::move(v);
}

// Lists: a sequence, a single scalar (a one-element list), or empty.
template <class E>
void read_value(const std::string& key, const YAML::Node& key_node, const YAML::Node& node, std::vector<E>& out,
                const Rule& rule, const Source& src) {
  std::vector<E> v;
  std::vector<YAML::Node> items;
  if (node.IsSequence()) {
    for (const auto& item : node) items.push_back(item);
  } else if (node.IsScalar()) {
    items.push_back(node);
  } else if (!node.IsNull()) {
    throw UserError(src.where(key_node, node) + key + ": expected a list, got " + describe(node));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    E e{};
    const std::string p = parse_scalar(items[i], e);
    if (!p.empty()) throw UserError(src.where(key_node, items[i]) + key + "[" + std::to_string(i) + "]: " + p);
    v.push_back(std::move(e));
  }
  check_rule(key, v, rule, [&](int64_t i) {
    return src.where(key_node, i >= 0 && i < static_cast<int64_t>(items.size()) ? items[i] : node);
  });
  out = std::move(v);
}

// Reads one YAML map into a section (or the whole Config); keys it does not declare are
// errors.
class Reader {
 public:
  Reader(const YAML::Node& map, std::string prefix, const Source& src) : prefix_(std::move(prefix)), src_(src) {
    if (!map.IsDefined() || map.IsNull()) return;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar())
        throw UserError(src_.where(key) + "expected a key name" +
                        (prefix_.empty() ? "" : " under '" + section() + "'") + ", got " + describe(key));
      const std::string name = key.Scalar();
      for (const auto& e : entries_)
        if (e.name == name)
          throw UserError(src_.where(key) + "duplicate key '" + prefix_ + name + "' (first given on line " +
                          std::to_string(e.key.Mark().line + 1) + ")");
      entries_.push_back({name, key, it->second, false});
    }
  }

  template <class T>
  void field(const char* name, T& value, const char*, const Rule& rule = {}) {
    if (Entry* e = find(name)) read_value(prefix_ + name, e->key, e->value, value, rule, src_);
  }

  template <class S>
  void section(const char* name, S& s, const char*) {
    Entry* e = find(name);
    if (!e) return;
    read_section(prefix_ + name, e->key, e->value, s, src_);
  }

  // Unknown keys: each is an error, with the closest known key as a suggestion.
  void finish() const {
    for (const auto& e : entries_)
      if (!e.used) {
        const std::string path = prefix_ + e.name;
        throw UserError(src_.where(e.key) + "unknown key '" + path + "'" + did_you_mean(path, known_paths()));
      }
  }

  template <class S>
  static void read_section(const std::string& path, const YAML::Node& key, const YAML::Node& node, S& s,
                           const Source& src) {
    if (!node.IsMap() && !node.IsNull())
      throw UserError(src.where(key, node) + path + ": expected a map of keys (a section), got " + describe(node));
    S copy = s;
    Reader sub(node, path + ".", src);
    copy.visit(sub);
    sub.finish();
    s = std::move(copy);
  }

 private:
  struct Entry {
    std::string name;
    YAML::Node key, value;
    bool used;
  };
  Entry* find(const char* name) {
    for (auto& e : entries_)
      if (e.name == name) return e.used = true, &e;
    return nullptr;
  }
  std::string section() const { return prefix_.substr(0, prefix_.size() - 1); }

  std::string prefix_;
  const Source& src_;
  std::vector<Entry> entries_;
};

// Applies one override to the key or section at `target`.
class OverrideApplier {
 public:
  OverrideApplier(std::string target, std::string prefix, const YAML::Node& value, const Source& src, bool& found)
      : target_(std::move(target)), prefix_(std::move(prefix)), value_(value), src_(src), found_(found) {}

  template <class T>
  void field(const char* name, T& value, const char*, const Rule& rule = {}) {
    if (prefix_ + name != target_) return;
    found_ = true;
    read_value(target_, value_, value_, value, rule, src_);
  }

  template <class S>
  void section(const char* name, S& s, const char*) {
    const std::string path = prefix_ + name;
    if (path == target_) {
      found_ = true;
      Reader::read_section(path, value_, value_, s, src_);
    } else if (target_.rfind(path + ".", 0) == 0) {
      OverrideApplier sub(target_, path + ".", value_, src_, found_);
      s.visit(sub);
    }
  }

 private:
  std::string target_, prefix_;
  const YAML::Node& value_;
  const Source& src_;
  bool& found_;
};

void apply_override(Config& config, const std::string& text) {
  const std::string where = "override '" + text + "': ";
  const size_t eq = text.find('=');
  if (eq == std::string::npos) throw UserError(where + "expected key.path=value (e.g. optim.lr=3e-4), found no '='");
  auto trim = [](std::string s) {
    const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  const std::string key = trim(text.substr(0, eq));
  const std::string value_text = trim(text.substr(eq + 1));
  if (key.empty()) throw UserError(where + "the key before '=' is empty");
  YAML::Node value;
  try {
    value = value_text.empty() ? YAML::Node() : YAML::Load(value_text);
  } catch (const YAML::Exception& e) {
    throw UserError(where + "the value '" + value_text + "' is not valid YAML: " + e.msg);
  }
  Source src{"", text};
  bool found = false;
  Config updated = config;
  OverrideApplier applier(key, "", value, src, found);
  updated.visit(applier);
  if (!found) throw UserError(where + "unknown key '" + key + "'" + did_you_mean(key, known_paths()));
  config = std::move(updated);
}

// ---- Key listing, flattening, rule checking ------------------------------------------------

struct KeyLister {
  std::vector<std::string>* keys;
  std::vector<std::string>* sections;
  std::string prefix;
  template <class T>
  void field(const char* name, T&, const char*, const Rule& = {}) {
    keys->push_back(prefix + name);
  }
  template <class S>
  void section(const char* name, S& s, const char*) {
    if (sections) sections->push_back(prefix + name);
    KeyLister sub{keys, sections, prefix + name + "."};
    s.visit(sub);
  }
};

// Keys and section paths: the candidates of did-you-mean.
std::vector<std::string> known_paths() {
  std::vector<std::string> keys, sections;
  Config c;
  KeyLister lister{&keys, &sections, ""};
  c.visit(lister);
  keys.insert(keys.end(), sections.begin(), sections.end());
  return keys;
}

struct Flattener {
  std::vector<std::pair<std::string, std::string>>* out;
  std::string prefix;
  template <class T>
  void field(const char* name, T& value, const char*, const Rule& = {}) {
    out->emplace_back(prefix + name, format(value));
  }
  template <class S>
  void section(const char* name, S& s, const char*) {
    Flattener sub{out, prefix + name + "."};
    s.visit(sub);
  }
};

std::vector<std::pair<std::string, std::string>> flatten(const Config& config) {
  std::vector<std::pair<std::string, std::string>> out;
  Config c = config;
  Flattener f{&out, ""};
  c.visit(f);
  return out;
}

struct RuleChecker {
  std::string prefix;
  template <class T>
  void field(const char* name, T& value, const char*, const Rule& rule = {}) {
    check_rule(prefix + name, value, rule, [](int64_t) { return std::string(); });
  }
  template <class S>
  void section(const char* name, S& s, const char*) {
    RuleChecker sub{prefix + name + "."};
    s.visit(sub);
  }
};

struct Dumper {
  std::ostringstream* os;
  std::string indent;
  template <class T>
  void field(const char* name, T& value, const char*, const Rule& = {}) {
    *os << indent << name << ": " << format(value) << "\n";
  }
  template <class S>
  void section(const char* name, S& s, const char*) {
    *os << indent << name << ":\n";
    Dumper sub{os, indent + "  "};
    s.visit(sub);
  }
};

// ---- The reference ----------------------------------------------------------------------

std::string md_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

std::string allowed_text(const Rule& r, bool list) {
  std::vector<std::string> parts;
  if (r.length >= 0) parts.push_back(std::to_string(r.length) + " elements");
  std::string each;
  if (r.min || r.max) each = bounds_text(r);
  if (!r.choices.empty()) {
    std::vector<std::string> quoted;
    for (const auto& c : r.choices) quoted.push_back("`" + c + "`");
    each = join(quoted, ", ");
  }
  if (r.form) each = each.empty() ? r.form : each + "; " + r.form;
  if (!each.empty()) parts.push_back(list ? "each " + each : each);
  return join(parts, "; ");
}

struct DocSection {
  std::string path, description;
  std::vector<std::string> rows;
};

template <class T>
bool is_list(const T&) {
  return false;
}
template <class E>
bool is_list(const std::vector<E>&) {
  return true;
}

struct DocCollector {
  std::vector<DocSection>* out;
  size_t index;
  std::string prefix;
  template <class T>
  void field(const char* name, T& value, const char* description, const Rule& rule = {}) {
    const std::string def = "`" + format(value) + "`";
    (*out)[index].rows.push_back("| `" + prefix + name + "` | " + type_name(value) + " | " + md_escape(def) + " | " +
                                 md_escape(allowed_text(rule, is_list(value))) + " | " + md_escape(description) + " |");
  }
  template <class S>
  void section(const char* name, S& s, const char* description) {
    out->push_back({prefix + name, description, {}});
    DocCollector sub{out, out->size() - 1, prefix + name + "."};
    s.visit(sub);
  }
};

}  // namespace

// ---- Public API --------------------------------------------------------------------------

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    std::vector<YAML::Node> docs = YAML::LoadAll(yaml_text);
    if (docs.size() > 1)
      throw UserError(source_name + ": holds " + std::to_string(docs.size()) +
                      " YAML documents (separated by '---'); a config is one document");
    if (!docs.empty()) root = docs.front();
  } catch (const YAML::ParserException& e) {
    throw UserError(source_name + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  } catch (const YAML::Exception& e) {
    throw UserError(source_name + ": invalid YAML: " + e.msg);
  }
  Source src{source_name, ""};
  if (root.IsDefined() && !root.IsNull() && !root.IsMap())
    throw UserError(src.where(root) + "expected a map of sections (model, data, optim, ...), got " + describe(root));
  Config config;
  Reader reader(root, "", src);
  config.visit(reader);
  reader.finish();
  for (const auto& o : overrides) apply_override(config, o);
  try {
    validate(config);
  } catch (const UserError& e) {
    throw UserError(source_name + (overrides.empty() ? "" : " (with overrides)") + ": " + e.what());
  }
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  SSMT_CHECK(in, "cannot read config file '", path, "'",
             std::filesystem::exists(path) ? " (permission denied?)" : " (no such file)");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path, overrides);
}

void validate(const Config& config) {
  Config c = config;
  RuleChecker rules{""};
  c.visit(rules);

  SSMT_CHECK(config.train.recompute == "none" || config.model.dropout == 0, "train.recompute: '",
             config.train.recompute,
             "' recomputes the forward in the backward, which needs the same dropout draws: set model.dropout to 0 "
             "or train.recompute to none");
  validate(config.model);  // model.layers and each mixer's own checks (ssm/model.h)
  SSMT_CHECK(config.schedule.min_lr <= config.optim.lr, "schedule.min_lr (", format(config.schedule.min_lr),
             ") must not exceed optim.lr (", format(config.optim.lr), ")");
  SSMT_CHECK(config.budget.steps == 0 || config.schedule.warmup_steps <= config.budget.steps, "schedule.warmup_steps (",
             config.schedule.warmup_steps, ") exceeds budget.steps (", config.budget.steps, ")");
  SSMT_CHECK(config.dist.zero == 0 || config.optim.name == "adamw", "dist.zero: 1 shards AdamW's state; optim.name is '",
             config.optim.name, "', so set dist.zero=0 or optim.name=adamw");
  const DataSection& d = config.data;
  SSMT_CHECK(d.kind == "synthetic" || !d.path.empty(), "data.path is required when data.kind is ", d.kind,
             " (the training files; data.kind=synthetic needs none)");
  for (size_t i = 0; i < d.path.size(); ++i) SSMT_CHECK(!d.path[i].empty(), "data.path[", i, "] is empty");
  for (size_t i = 0; i < d.val_path.size(); ++i) SSMT_CHECK(!d.val_path[i].empty(), "data.val_path[", i, "] is empty");
  if (d.pack_documents) {
    SSMT_CHECK(d.eot_token >= 0 || d.kind == "shards", "data.eot_token: data.pack_documents needs the token that "
               "begins each document, and ", d.kind, " data has none of its own; set data.eot_token (e.g. 10, a "
               "newline, for text) or data.pack_documents=false");
    SSMT_CHECK(d.eot_token < config.model.vocab_size, "data.eot_token: ", d.eot_token,
               " is outside the vocabulary: model.vocab_size is ", config.model.vocab_size);
  }
}

std::string to_yaml(const Config& config) {
  std::ostringstream os;
  Config c = config;
  Dumper dumper{&os, ""};
  c.visit(dumper);
  return os.str();
}

std::vector<std::string> config_differences(const Config& a, const Config& b) {
  const auto fa = flatten(a), fb = flatten(b);
  std::vector<std::string> out;
  for (size_t i = 0; i < fa.size(); ++i)
    if (fa[i].second != fb[i].second) out.push_back(fa[i].first + ": " + fa[i].second + " vs " + fb[i].second);
  return out;
}

std::vector<std::string> config_keys() {
  std::vector<std::string> keys;
  Config c;
  KeyLister lister{&keys, nullptr, ""};
  c.visit(lister);
  return keys;
}

std::string config_docs_markdown() {
  std::vector<DocSection> sections;
  Config c;
  DocCollector collector{&sections, 0, ""};
  c.visit(collector);
  std::ostringstream os;
  for (size_t i = 0; i < sections.size(); ++i) {
    const auto& s = sections[i];
    os << (i ? "\n" : "") << "### `" << s.path << "`\n\n" << s.description << "\n\n";
    os << "| Key | Type | Default | Allowed | Description |\n";
    os << "| --- | --- | --- | --- | --- |\n";
    for (const auto& r : s.rows) os << r << "\n";
  }
  return os.str();
}

double resolved_ssm_lr(const Config& config) {
  if (config.optim.ssm_lr > 0) return config.optim.ssm_lr;
  if (const double mixer_lr = mixer_ssm_lr(config.model); mixer_lr > 0) return mixer_lr;
  return config.optim.lr;
}

int64_t resolved_warmup_steps(const ScheduleSection& schedule, int64_t total_steps) {
  if (schedule.warmup_steps >= 0) return schedule.warmup_steps;
  return std::llround(schedule.warmup_fraction * static_cast<double>(std::max<int64_t>(total_steps, 0)));
}

int64_t resolved_eval_seq_len(const Config& config) {
  return config.data.eval_seq_len > 0 ? config.data.eval_seq_len : config.train.seq_len;
}

std::string resolved_run_name(const Config& config, const std::string& source_name) {
  if (!config.run.name.empty()) return config.run.name;
  const std::string stem = std::filesystem::path(source_name).stem().string();
  return stem.empty() ? "run" : stem;
}

std::string resolved_run_dir(const Config& config, const std::string& source_name) {
  if (!config.run.dir.empty()) return config.run.dir;
  return (std::filesystem::path("runs") / resolved_run_name(config, source_name)).string();
}

}  // namespace ssmtrain
