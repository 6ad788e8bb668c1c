#!/usr/bin/env bash
# export / import / logits / train --init-from (alone and with --resume auto) / plot through the
# command line, without Python:
# a tiny run is exported (hf and mamba_ssm), imported back, and the imported checkpoint
# must give the same logits bit for bit and start a fine-tuning run; bad input exits 2
# naming the file or option. (The comparison with transformers: tools/interop_check.py.)
# Usage: tests/train/interop_cli_check.sh path/to/ssmtrain
set -uo pipefail
bin="${1:?usage: interop_cli_check.sh path/to/ssmtrain}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "interop cli check: $*"; exit 1; }
cat > "$dir/tiny.yaml" <<'YAML'
model: {mixer: mamba2, d_model: 32, n_layer: 2, d_state: 8, headdim: 16, ngroups: 2, chunk_size: 8, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
budget: {steps: 4}
schedule: {warmup_steps: 1}
train: {batch_size: 2, seq_len: 24, log_every: 1, eval_every: 0, sample_tokens: 0}
YAML
"$bin" train "$dir/tiny.yaml" --run-dir "$dir/run" --quiet || fail "training exited $?"
ckpt="$dir/run/checkpoints/ckpt_00000004.h5"
ids="1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 0 1 2 3"
"$bin" logits "$ckpt" --ids "$ids" --out "$dir/a.safetensors" > /dev/null || fail "logits exited $?"
for fmt in hf mamba_ssm; do
  "$bin" export "$ckpt" "$dir/$fmt" --format "$fmt" > /dev/null || fail "export --format $fmt exited $?"
  [ -f "$dir/$fmt/config.json" ] && [ -f "$dir/$fmt/model.safetensors" ] || fail "export --format $fmt wrote no files"
  "$bin" import "$dir/$fmt" "$dir/$fmt.h5" > /dev/null || fail "import of the $fmt export exited $?"
  "$bin" logits "$dir/$fmt.h5" --ids "$ids" --out "$dir/b.safetensors" > /dev/null || fail "logits of $fmt.h5 exited $?"
  # Same weights, same model: the logits files are identical byte for byte.
  cmp -s "$dir/a.safetensors" "$dir/b.safetensors" || fail "logits after an export/import through $fmt differ"
done
"$bin" train "$dir/tiny.yaml" --run-dir "$dir/ft" --init-from "$dir/hf.h5" > "$dir/ft.out" 2>&1 || \
  { cat "$dir/ft.out"; fail "train --init-from exited $?"; }
grep -q "initialised the weights from $dir/hf.h5" "$dir/run/../ft/train.log" || fail "train.log does not name --init-from"
# With --resume auto, --init-from starts a run directory that holds no checkpoint yet (and
# says so); run again, the directory's own checkpoint wins and the weights are not reset.
"$bin" train "$dir/tiny.yaml" --run-dir "$dir/ft3" --resume auto --init-from "$dir/hf.h5" --max-steps 2 \
  > "$dir/ft3.out" 2>&1 || { cat "$dir/ft3.out"; fail "train --resume auto --init-from exited $?"; }
grep -q "starting from the weights of $dir/hf.h5" "$dir/ft3.out" || \
  { cat "$dir/ft3.out"; fail "--resume auto with --init-from does not say it starts from those weights"; }
"$bin" train "$dir/tiny.yaml" --run-dir "$dir/ft3" --resume auto --init-from "$dir/hf.h5" \
  > "$dir/ft3b.out" 2>&1 || \
  { cat "$dir/ft3b.out"; fail "train --resume auto --init-from (second run) exited $?"; }
inits=$(grep -c "initialised the weights" "$dir/ft3/train.log")
[ "$inits" -eq 1 ] || fail "train.log of the run records $inits initialisations from --init-from, expected 1"
grep -q "ckpt_00000004.h5" <(ls "$dir/ft3/checkpoints") || fail "the resumed run did not finish its 4 steps"

"$bin" plot "$dir/run" "$dir/ft" --out "$dir/runs.svg" > /dev/null || fail "plot exited $?"
grep -q "<polyline" "$dir/runs.svg" || fail "plot wrote no curves"

expect2() {  # expect2 PATTERN COMMAND...: exit code 2 and PATTERN in the message
  local pat="$1"; shift
  "$@" > "$dir/out" 2>&1; local rc=$?
  [ "$rc" -eq 2 ] || { cat "$dir/out"; fail "'$*' exited $rc, expected 2"; }
  grep -q -- "$pat" "$dir/out" || { cat "$dir/out"; fail "'$*': message lacks '$pat'"; }
}
expect2 "nope.h5" "$bin" export "$dir/nope.h5" "$dir/x"
expect2 "'onnx'" "$bin" export "$ckpt" "$dir/x" --format onnx
expect2 "not a directory" "$bin" import "$dir/none" "$dir/x.h5"
echo '{"model_type": "gpt2"}' > "$dir/hf/config.json"
expect2 "model_type" "$bin" import "$dir/hf" "$dir/x.h5"
expect2 "not a token id" "$bin" logits "$ckpt" --ids "1 99" --out "$dir/x.safetensors"
expect2 "init-from" "$bin" train "$dir/tiny.yaml" --run-dir "$dir/ft2" --init-from "$dir/missing.h5"
expect2 "must end in .svg" "$bin" plot "$dir/run" --out "$dir/x.png"
expect2 "no metrics.jsonl" "$bin" plot "$dir"
echo "interop cli check: export/import round trips give identical logits; bad input exits 2"
