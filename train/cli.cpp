#include "train/cli.h"

#include <cstring>
#include <iostream>
#include <set>

#include "core/error.h"

namespace ssmtrain {

namespace {

struct Command {
  const char* name;
  const char* usage;
  const char* help;
  std::set<std::string> value_flags;   // --flag VALUE
  std::set<std::string> switch_flags;  // --flag
  int (*fn)(const Args&);
  std::set<std::string> list_flags = {};  // --flag VALUE..., up to the next --option
};

const std::vector<Command>& commands() {
  static const std::vector<Command> cmds = {
      {"train",
       "ssmtrain train CONFIG.yaml [--run-dir DIR] [--resume auto|PATH] [--init-from CKPT.h5] [--max-steps N] "
       "[--profile N] [--quiet] "
       "[key.path=value ...]",
       "Train a model from a YAML config. Overrides like optim.lr=3e-4 are type-checked like the file.\n"
       "The run directory (default runs/<run.name>) receives config.yaml, metrics.jsonl, train.log and\n"
       "checkpoints/. --resume auto continues from the newest valid checkpoint of the run directory;\n"
       "--resume PATH from that checkpoint. Ctrl-C or SIGTERM finishes the step, saves and exits 0.\n"
       "--init-from CKPT.h5 starts a fresh run (new optimizer state, schedule from step 0) from that\n"
       "checkpoint's weights, e.g. one made by `ssmtrain import`; the config's model must match them.\n"
       "--max-steps N stops (with a checkpoint) after step N without changing the planned schedule.\n"
       "--quiet prints nothing but errors (logs and metrics are still written).\n"
       "--profile N records N steps after 2 warm-up steps (train.profile_steps): a Chrome trace in\n"
       "<run dir>/profile.json (Perfetto, chrome://tracing) and a per-op time table in the log.",
       {"--run-dir", "--resume", "--init-from", "--max-steps", "--profile"}, {"--quiet"}, cmd_train},
      {"eval", "ssmtrain eval CKPT.h5 [--batches N] [key.path=value ...]",
       "Evaluate a checkpoint on its validation split: loss, bits per byte (byte-level data) or\n"
       "answer accuracy (synthetic tasks). Overrides change the data (e.g. data.eval_seq_len=4096).",
       {"--batches"}, {}, cmd_eval},
      {"sample",
       "ssmtrain sample CKPT.h5 [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] "
       "[--device D] [--tokenizer tokenizer.json] [key.path=value ...]",
       "Generate text from a checkpoint with the recurrent step (constant time per token).\n"
       "--temperature 0 samples greedily (the most likely token); --device cpu|cuda|cuda:N.\n"
       "--tokenizer encodes the prompt and decodes the output with the tokenizer the data was prepared\n"
       "with (default prompt: its <|endoftext|>); without it, byte-level models read and write text and\n"
       "other models take and print token ids.",
       {"--prompt", "--tokens", "--temperature", "--top-k", "--top-p", "--seed", "--device", "--tokenizer"}, {},
       cmd_sample},
      {"info", "ssmtrain info CKPT.h5", "Print a checkpoint's config, step, tokens seen and parameter counts.", {}, {},
       cmd_info},
      {"prepare",
       "ssmtrain prepare --input FILE... --output DIR [--val-fraction F] [--shard-tokens N] [--eot ID] "
       "[--tokenizer tokenizer.json]",
       "Turn text files (plain or .gz) into token shards (llm.c format) with a train/val split.\n"
       "Tokens are bytes, or with --tokenizer the ids of a byte-level BPE tokenizer.json (GPT-2, GPT-NeoX),\n"
       "encoded on every core; each file is one document. An --input may be a directory (every file\n"
       "below it, in path order) or @LIST (a file naming one input per line).\n"
       "--eot ID puts that token (a byte without --tokenizer) before every document (each input file's\n"
       "part) and records it in the shard headers, for data.pack_documents (docs/data.md); with a\n"
       "tokenizer its <|endoftext|> is the default.",
       {"--output", "--val-fraction", "--shard-tokens", "--eot", "--tokenizer"}, {}, cmd_prepare, {"--input"}},
      {"sweep",
       "ssmtrain sweep CONFIG.yaml [CONFIG.yaml ...] --grid \"key.path=v1,v2;key.path=v1,v2\" [--run-dir DIR] "
       "[--family KEY|none] [--bootstrap N] [--jobs N [--gpus 0,1,...]] [--fit-only] [key.path=value ...]",
       "Train each config over every combination of the grid (each a run directory under DIR, default\n"
       "runs/<config names>-sweep), write DIR/sweep.jsonl (N, D, C and final validation loss per run),\n"
       "fit L(N, D) = E + A/N^alpha + B/D^beta per model family when its runs identify it, with\n"
       "bootstrap intervals (--bootstrap N resamples, default 200), and IsoFLOP profiles where runs\n"
       "share a compute budget (budget.flops); DIR/fit.json and the pictures DIR/plot.svg and\n"
       "DIR/scaling.svg (docs/scaling.md). With several configs each is a family (named by its\n"
       "file); with one, families are the values of --family KEY, by default model.mixer when the\n"
       "grid varies it. Finished runs are skipped, so an interrupted sweep continues when the\n"
       "command is repeated. --jobs N trains N runs at once, each its own `ssmtrain train` process\n"
       "(small models share one GPU well, best under CUDA MPS); --gpus 0,1,2,3 spreads them over\n"
       "those GPUs (job slot k on the k-th, round robin). --fit-only trains nothing: it fits\n"
       "and draws the finished runs already in DIR (their checkpoints need not be kept).",
       {"--grid", "--run-dir", "--family", "--bootstrap", "--jobs", "--gpus"}, {"--fit-only"}, cmd_sweep},
      {"export", "ssmtrain export CKPT.h5 OUTDIR [--format hf|mamba_ssm]",
       "Write a checkpoint's weights for other code: OUTDIR/config.json and OUTDIR/model.safetensors.\n"
       "--format hf (default): a directory transformers' MambaForCausalLM / Mamba2ForCausalLM load with\n"
       "from_pretrained; --format mamba_ssm: mamba_ssm's MambaLMHeadModel state dict and MambaConfig.\n"
       "Stacks of mamba or of mamba2 layers only (docs/interop.md).",
       {"--format"}, {}, cmd_export},
      {"import", "ssmtrain import HF_DIR OUT.h5",
       "Read a transformers Mamba / Mamba-2 directory (config.json + model.safetensors, or its shards), or\n"
       "one written by export, into an ssmtrain checkpoint. Evaluate or sample it like any checkpoint, or\n"
       "fine-tune it with `ssmtrain train CONFIG.yaml --init-from OUT.h5` (the model section it prints).",
       {}, {}, cmd_import},
      {"logits", "ssmtrain logits CKPT.h5 --ids \"ID ID ...\" --out FILE.safetensors [key.path=value ...]",
       "Run the checkpoint's model in fp32 on the CPU over the token ids and write its logits\n"
       "(1, L, padded vocab) as the tensor 'logits' of a safetensors file, to compare with other code.",
       {"--ids", "--out"}, {}, cmd_logits},
      {"plot", "ssmtrain plot RUN_DIR... [--out FILE.svg]",
       "Draw training and validation loss against tokens (runs overlaid), the learning rate and tokens/s\n"
       "against steps as an SVG picture (default RUN_DIR/plot.svg for one run, ./plot.svg for several).\n"
       "A sweep directory adds final validation loss against compute 6ND with the fitted law's\n"
       "compute-optimal frontier (fit.json).",
       {"--out"}, {}, cmd_plot},
      {"config", "ssmtrain config --docs | ssmtrain config CONFIG.yaml [key.path=value ...]",
       "--docs prints the reference of every config key (docs/config.md); with a file, prints the\n"
       "resolved config after defaults and overrides.",
       {}, {"--docs"}, cmd_config},
  };
  return cmds;
}

void print_usage(std::ostream& os) {
  os << "usage: ssmtrain <command> [options]\n\ncommands:\n";
  for (const auto& c : commands()) os << "  " << c.usage << "\n";
  os << "\n`ssmtrain <command> --help` explains one command.\n";
}

}  // namespace

std::vector<CommandOptions> command_options() {
  std::vector<CommandOptions> out;
  for (const auto& c : commands()) {
    CommandOptions o{c.name, c.usage, {}};
    for (const auto* flags : {&c.value_flags, &c.switch_flags, &c.list_flags})
      o.options.insert(o.options.end(), flags->begin(), flags->end());
    out.push_back(std::move(o));
  }
  return out;
}

std::string Args::get(const std::string& f, const std::string& def) const {
  auto it = flags.find(f);
  return it == flags.end() ? def : it->second;
}

double Args::get_double(const std::string& f, double def) const {
  auto it = flags.find(f);
  if (it == flags.end()) return def;
  try {
    size_t pos;
    double v = std::stod(it->second, &pos);
    if (pos == it->second.size()) return v;
  } catch (...) {
  }
  throw UserError(f + ": expected a number, got '" + it->second + "'");
}

int64_t Args::get_int(const std::string& f, int64_t def) const {
  auto it = flags.find(f);
  if (it == flags.end()) return def;
  try {
    size_t pos;
    long long v = std::stoll(it->second, &pos);
    if (pos == it->second.size()) return v;
  } catch (...) {
  }
  throw UserError(f + ": expected an integer, got '" + it->second + "'");
}

int run_cli(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    print_usage(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? 2 : 0;
  }
  std::string name = argv[1];
  const Command* cmd = nullptr;
  for (const auto& c : commands())
    if (name == c.name) cmd = &c;
  if (!cmd) {
    std::cerr << "ssmtrain: unknown command '" << name << "'\n";
    print_usage(std::cerr);
    return 2;
  }
  Args args;
  args.command = name;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << "usage: " << cmd->usage << "\n\n" << cmd->help << "\n";
      return 0;
    }
    if (a.rfind("--", 0) == 0) {
      std::string key = a, value;
      auto eq = a.find('=');
      if (eq != std::string::npos) key = a.substr(0, eq), value = a.substr(eq + 1);
      if (cmd->switch_flags.count(key)) {
        args.flags[key] = "1";
      } else if (cmd->value_flags.count(key)) {
        if (eq == std::string::npos) {
          if (i + 1 >= argc) throw UserError(key + ": expects a value (see `ssmtrain " + name + " --help`)");
          value = argv[++i];
        }
        args.flags[key] = value;
      } else if (cmd->list_flags.count(key)) {
        // Several values (prepare's input files): collect them all, separated by newlines.
        std::string values;
        if (eq != std::string::npos) values = value;
        while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
          if (!values.empty()) values += "\n";
          values += argv[++i];
        }
        if (values.empty()) throw UserError(key + ": expects at least one value");
        args.flags[key] = values;
      } else {
        throw UserError("unknown option '" + key + "' for `ssmtrain " + name + "` (see `ssmtrain " + name + " --help`)");
      }
    } else {
      args.positionals.push_back(a);
    }
  }
  return cmd->fn(args);
}

}  // namespace ssmtrain
