// The mixer registry: every sequence mixer a layer can name (model.mixer, model.layers)
// is registered here once, under its names, with its options struct. The struct declares
// its config keys in a visit() (core/options.h), may check itself in validate(), and its
// mixer's build function turns it into a layer. Everything that needs to know the mixers
// reads the registry: the model builder (ssm/model.cpp), the config keys, their checks and
// their reference (train/config.cpp through ModelOptions), and the tests.
//
// A registration groups the names that share one options struct (mamba, s6 and mamba_lti
// share MambaOptions). The options' keys sit directly under `model` or, when the
// registration names a section, under `model.<section>`. Keys that several mixers read
// (d_model, d_state, d_conv, expand, norm_eps) are the model's own (ssm/model.h) and reach
// the mixers through MixerContext.
//
// The built-in mixers are listed in ssm/mixer_registry.cpp; docs/design.md ("How to add a
// mixer") lists the files a new one touches.
#pragma once

#include <any>
#include <functional>
#include <memory>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/options.h"
#include "core/random.h"
#include "nn/mixer.h"

namespace ssmtrain {

// What a mixer's checks and its build function know of the model around it.
struct MixerContext {
  std::string name;  // the layer's mixer name; "" when checking options that no layer uses
  int64_t d_model = 0, n_layer = 0;
  int64_t d_state = 0, d_conv = 0, expand = 0;  // model.d_state, model.d_conv, model.expand
  double norm_eps = 1e-5;
  int64_t seq_len = 0;  // the training sequence length (train.seq_len); 0 = not known
  std::string prefix;   // the config path of the mixer's keys: "model." or "model.<section>."

  // The full config path of one of the mixer's keys, for messages.
  std::string key(const std::string& key_name) const { return prefix + key_name; }
};

struct MixerName {
  std::string name;
  std::string summary;  // a few words for the reference of model.mixer
};

// One registration, with its options struct erased (mixer_entry() below builds it).
struct MixerEntry {
  std::vector<MixerName> names;
  std::string section;      // "" = the keys sit directly under `model`
  std::string section_doc;  // the section's line in the reference
  std::any defaults;        // the options struct as default-constructed
  std::function<std::vector<OptionField>(std::any& options)> fields;
  std::function<bool(const std::any& a, const std::any& b)> equal;
  std::function<void(const std::any& options, const MixerContext& context)> validate;
  std::function<std::shared_ptr<Mixer>(const std::any& options, const MixerContext& context, Generator& gen)> build;
  // The optional hooks of the options struct (see mixer_entry); null when it has none.
  std::function<bool(const std::any& options, int64_t layer)> takes_layer;
  std::function<double(const std::any& options)> ssm_lr;
  std::function<std::pair<int, int>(const std::any& options)> expert_routing;
};

// The registration of the mixers `names`, which share the options struct `Options`: a
// default-constructible, copyable and comparable (== default) struct that declares its keys
// in `template <class V> void visit(V&)` (core/options.h) and may have
// `void validate(const MixerContext&) const`, which throws a UserError naming the key
// (context.key(...)) for values the per-key rules cannot judge alone. validate() runs for
// each of `names` a layer uses, or once with an empty name when no layer uses any.
// Options that shape the model around their layers say so through these optional members,
// read by ssm/model.cpp and train/ without knowing the mixer:
//   bool takes_layer(int64_t layer) const: a stacking rule; layer i (from 0) gets the
//     registration's first name whatever model.mixer and model.layers say (moe.every).
//   double ssm_lr() const: the learning rate asked for the parameters tagged
//     param_tag::ssm, 0 = none (s4.lr; optim.ssm_lr overrides it).
//   std::pair<int, int> expert_routing() const: experts per token and experts per layer of
//     the registration's layers, for active-parameter counts (moe: 1 and moe.experts).
// `build` makes the layer of `context.name`. The keys sit directly under `model`, or under
// `model.<section>` when `section` is given (`section_doc` is its line in the reference).
template <class Options>
using MixerBuild = std::shared_ptr<Mixer> (*)(const Options& options, const MixerContext& context, Generator& gen);

template <class Options>
MixerEntry mixer_entry(std::vector<MixerName> names, MixerBuild<Options> build, std::string section = "",
                       std::string section_doc = "") {
  MixerEntry e;
  e.names = std::move(names);
  e.section = std::move(section);
  e.section_doc = std::move(section_doc);
  e.defaults = Options{};
  e.fields = [](std::any& o) { return option_fields(std::any_cast<Options&>(o)); };
  e.equal = [](const std::any& a, const std::any& b) {
    return std::any_cast<const Options&>(a) == std::any_cast<const Options&>(b);
  };
  e.validate = [](const std::any& o, const MixerContext& c) {
    if constexpr (requires(const Options& opt, const MixerContext& ctx) { opt.validate(ctx); })
      std::any_cast<const Options&>(o).validate(c);
  };
  e.build = [build](const std::any& o, const MixerContext& c, Generator& gen) {
    return build(std::any_cast<const Options&>(o), c, gen);
  };
  if constexpr (requires(const Options& opt, int64_t layer) { opt.takes_layer(layer); })
    e.takes_layer = [](const std::any& o, int64_t layer) -> bool {
      return std::any_cast<const Options&>(o).takes_layer(layer);
    };
  if constexpr (requires(const Options& opt) { opt.ssm_lr(); })
    e.ssm_lr = [](const std::any& o) -> double { return std::any_cast<const Options&>(o).ssm_lr(); };
  if constexpr (requires(const Options& opt) { opt.expert_routing(); })
    e.expert_routing = [](const std::any& o) -> std::pair<int, int> {
      return std::any_cast<const Options&>(o).expert_routing();
    };
  return e;
}

// Adds a registration; InternalError when one of its names or its section is taken.
void register_mixer(MixerEntry entry);
// Removes the registration that holds `name` (tests register mixers of their own).
void unregister_mixer(const std::string& name);

// Every registration, the built-in ones first.
std::vector<std::shared_ptr<const MixerEntry>> mixer_entries();
// The registration that holds `name`, or null.
std::shared_ptr<const MixerEntry> find_mixer(const std::string& name);
// Every mixer name, in registration order.
const std::vector<std::string>& mixer_names();
// "mamba (Mamba-1 block), s6 (...), ...": the names with their summaries.
std::string mixer_summaries();

// The options of every registered mixer, one value per registration, each at its defaults
// when the set is made (a mixer registered later is not in sets made before). Visiting the
// set declares each registration's keys: directly, or as the section it names.
class MixerOptionSet {
 public:
  struct Item {
    std::shared_ptr<const MixerEntry> entry;
    std::any options;

    template <class V>
    void visit(V& v) {
      for (const OptionField& f : entry->fields(options)) f.visit(v);
    }
    bool operator==(const Item& o) const { return entry == o.entry && entry->equal(options, o.options); }
  };

  MixerOptionSet();

  // The options struct of type O (that of the registration using it).
  template <class O>
  O& get() {
    for (Item& i : items_)
      if (O* o = std::any_cast<O>(&i.options)) return *o;
    throw InternalError(std::string("no registered mixer has the options type ") + typeid(O).name());
  }
  template <class O>
  const O& get() const {
    return const_cast<MixerOptionSet*>(this)->get<O>();
  }

  // The item of the registration that holds mixer `name`; UserError naming the known
  // mixers when none does.
  const Item& of(const std::string& name) const;
  const std::vector<Item>& items() const { return items_; }

  // The keys directly under `model` first, then the sections.
  template <class V>
  void visit(V& v) {
    for (Item& i : items_)
      if (i.entry->section.empty()) i.visit(v);
    for (Item& i : items_)
      if (!i.entry->section.empty()) v.section(i.entry->section.c_str(), i, i.entry->section_doc.c_str());
  }
  bool operator==(const MixerOptionSet&) const = default;

 private:
  std::vector<Item> items_;
};

}  // namespace ssmtrain
