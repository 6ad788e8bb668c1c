// How an options struct declares its keys: each struct lists its fields once in a
// `visit()` template, with a name, a doc line and a Rule for the values it accepts:
//
//   template <class V>
//   void visit(V& v) {
//     v.field("d_model", d_model, "width of the residual stream", ge(1));
//   }
//
// A visitor is any class with `field(name, value, doc, rule)` (and, for nested structs,
// `section(name, s, doc)`); the config system (train/config.cpp) reads, checks, dumps and
// documents every key through visitors. Value types: int64_t, double, bool, std::string,
// std::vector<std::string>, std::vector<double>.
//
// The structs live in the layer that uses them (the mixers' options in ssm/), so this
// header is the only thing they share with the config system. OptionField lets code that
// does not know a struct's type (the mixer registry) hold its fields and visit them.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace ssmtrain {

// What a key accepts beyond its type: numeric bounds (for lists: each element), allowed
// strings (for lists: each element), an exact list length, or a custom check. Written with
// the helpers below: gt(0), ge(0).lt(1), one_of({"relu", "gelu"}).
struct Rule {
  std::optional<double> min, max;
  bool min_open = false, max_open = false;  // > and < instead of >= and <=
  std::vector<std::string> choices;
  int64_t length = -1;  // lists: required number of elements; -1 = any
  // A check the fields above cannot express: returns "" when the text is valid, otherwise
  // what is wrong with it. `form` describes the valid texts in the reference.
  std::string (*check)(const std::string& text) = nullptr;
  const char* form = nullptr;

  Rule lt(double x) const { Rule r = *this; r.max = x, r.max_open = true; return r; }
  Rule le(double x) const { Rule r = *this; r.max = x, r.max_open = false; return r; }
  Rule size(int64_t n) const { Rule r = *this; r.length = n; return r; }
};

inline Rule gt(double x) { Rule r; r.min = x, r.min_open = true; return r; }
inline Rule ge(double x) { Rule r; r.min = x; return r; }
inline Rule one_of(std::vector<std::string> choices) { Rule r; r.choices = std::move(choices); return r; }

// A number as the config writes it: the shortest text that reads back to the same double,
// in %g style (0.0003, 1e-05). Messages about option values use it too.
inline std::string format_number(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
  return std::string(buf, r.ptr);
}

// One declared field of an options struct: its declaration and a reference to its value.
struct OptionField {
  std::string name, doc;
  Rule rule;
  std::variant<int64_t*, double*, bool*, std::string*, std::vector<std::string>*, std::vector<double>*> value;

  // Declares the field to `v` as the struct's own visit() would.
  template <class V>
  void visit(V& v) const {
    std::visit([&](auto* p) { v.field(name.c_str(), *p, doc.c_str(), rule); }, value);
  }
};

namespace detail {
struct FieldCollector {
  std::vector<OptionField> fields;
  template <class T>
  void field(const char* name, T& value, const char* doc, const Rule& rule = {}) {
    fields.push_back({name, doc, rule, &value});
  }
};
}  // namespace detail

// The fields `options.visit()` declares, referring into `options` (which must outlive them).
// Structs with nested sections are not supported here.
template <class O>
std::vector<OptionField> option_fields(O& options) {
  detail::FieldCollector collector;
  options.visit(collector);
  return std::move(collector.fields);
}

}  // namespace ssmtrain
