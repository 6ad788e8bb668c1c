#!/usr/bin/env bash
# Runs the full (GPU) versions of the capability demos of docs/demos.md and writes their
# results as markdown tables to $RUNS/results.md (and the terminal).
#
#   tools/run_demos.sh [all|selective_copy|induction|text|mamba2]... [key.path=value ...]
#
# Environment:
#   SSMTRAIN   the ssmtrain binary of a CUDA build     (default: build/ssmtrain)
#   RUNS       where the run directories go            (default: runs/demos)
#   EVAL_BATCHES, EVAL_BATCH_SIZE
#              induction evaluation at 2^10 .. 2^16: batches of this many sequences
#              (defaults 32 and 16: 512 answers per length, one per sequence)
#
# Overrides (key.path=value) go to every training run, e.g. train.device=cuda:1 or
# budget.steps=2000 for a quicker pass. A run directory that already holds a finished run is
# resumed (`--resume auto`), which returns at once, so an interrupted invocation can simply be
# repeated.
set -euo pipefail

cd "$(dirname "$0")/.."
SSMTRAIN=${SSMTRAIN:-build/ssmtrain}
RUNS=${RUNS:-runs/demos}
EVAL_BATCHES=${EVAL_BATCHES:-32}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-16}

parts=()
overrides=()
for a in "$@"; do
  case "$a" in
    *=*) overrides+=("$a") ;;
    all | selective_copy | induction | text | mamba2) parts+=("$a") ;;
    -h | --help)
      sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "run_demos.sh: unknown part '$a' (all, selective_copy, induction, text, mamba2)" >&2
      exit 2
      ;;
  esac
done
[ ${#parts[@]} -eq 0 ] && parts=(all)
want() {
  local p
  for p in "${parts[@]}"; do [ "$p" = all ] || [ "$p" = "$1" ] && return 0; done
  return 1
}

[ -x "$SSMTRAIN" ] || { echo "run_demos.sh: no ssmtrain binary at '$SSMTRAIN' (set SSMTRAIN)" >&2; exit 2; }
mkdir -p "$RUNS"
RESULTS="$RUNS/results.md"
: > "$RESULTS"
out() { echo "$*" | tee -a "$RESULTS"; }

# train NAME: trains configs/NAME.yaml into $RUNS/NAME; prints the wall time in seconds.
train() {
  local name=$1 dir="$RUNS/$1" start
  start=$(date +%s)
  if ls "$dir"/checkpoints/ckpt_*.h5 > /dev/null 2>&1; then
    "$SSMTRAIN" train "configs/$name.yaml" --run-dir "$dir" --resume auto ${overrides[@]+"${overrides[@]}"} >&2
  else
    "$SSMTRAIN" train "configs/$name.yaml" --run-dir "$dir" ${overrides[@]+"${overrides[@]}"} >&2
  fi
  echo $(($(date +%s) - start))
}

# The newest checkpoint of run NAME.
last_checkpoint() { ls "$RUNS/$1"/checkpoints/ckpt_*.h5 | sort | tail -n 1; }

# field KEY LINE: the value of "KEY": in a metrics.jsonl line.
field() { echo "$2" | sed -n "s/.*\"$1\": *\([-0-9.eE+]*\).*/\1/p"; }

# First and last validation records of run NAME.
first_val() { grep '"split": "val"' "$RUNS/$1/metrics.jsonl" | head -n 1; }
last_val() { grep '"split": "val"' "$RUNS/$1/metrics.jsonl" | tail -n 1; }

pct() { [ -n "$1" ] && awk -v x="$1" 'BEGIN { printf "%.1f%%", 100 * x }' || echo "-"; }
num() { [ -n "$1" ] && awk -v x="$1" 'BEGIN { printf "%.4f", x }' || echo "-"; }

out "# Demo results ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2> /dev/null || echo unknown))"
out ""
[ ${#overrides[@]} -gt 0 ] && out "Overrides: ${overrides[*]}" && out ""

if want selective_copy; then
  out "## Selective copying (L 1024, 16 data tokens, 2 layers, d_model 64)"
  out ""
  out "| model | config | accuracy | val loss | steps | wall time |"
  out "|---|---|---|---|---|---|"
  for m in mamba s6 mamba_lti s4; do
    secs=$(train "selective_copy_$m")
    rec=$(last_val "selective_copy_$m")
    out "| $m | configs/selective_copy_$m.yaml | $(pct "$(field acc "$rec")") | $(num "$(field loss "$rec")") |" \
      "$(field step "$rec") | ${secs} s |"
  done
  out ""
fi

if want induction; then
  out "## Induction heads (trained at L 256, 2 layers, d_model 64)"
  out ""
  secs=$(train induction_mamba)
  ckpt=$(last_checkpoint induction_mamba)
  rec=$(last_val induction_mamba)
  out "Training: $(field step "$rec") steps in ${secs} s; accuracy at 256: $(pct "$(field acc "$rec")")."
  out ""
  out "| eval length | answers | accuracy | loss (nats) |"
  out "|---|---|---|---|"
  for p in 10 11 12 13 14 15 16; do
    n=$((1 << p))
    res=$("$SSMTRAIN" eval "$ckpt" "data.eval_seq_len=$n" "train.batch_size=$EVAL_BATCH_SIZE" \
      --batches "$EVAL_BATCHES" ${overrides[@]+"${overrides[@]}"})
    acc=$(echo "$res" | sed -n 's/^accuracy *\([0-9.]*\)%.*/\1/p')
    loss=$(echo "$res" | sed -n 's/^loss *\([0-9.]*\).*/\1/p')
    answers=$(echo "$res" | sed -n 's/^positions *\([0-9]*\).*/\1/p')
    out "| 2^$p = $n | $answers | $acc% | $loss |"
  done
  out ""
fi

if want text; then
  out "## MoE-Mamba vs Mamba on gcide text (3.57M active parameters each, 32.8M tokens)"
  out ""
  out "| model | config | val bits/byte (first eval) | val bits/byte (final) | val loss (final) | wall time |"
  out "|---|---|---|---|---|---|"
  for name in mamba_text moe_mamba_text; do
    secs=$(train "$name")
    a=$(first_val "$name")
    b=$(last_val "$name")
    out "| $name | configs/$name.yaml | $(num "$(field bpb "$a")") (step $(field step "$a")) |" \
      "$(num "$(field bpb "$b")") | $(num "$(field loss "$b")") | ${secs} s |"
  done
  out ""
fi

if want mamba2; then
  out "## Mamba-2 LM on gcide text"
  out ""
  secs=$(train mamba2_text)
  out "Wall time ${secs} s. Validation loss by evaluation (it must fall):"
  out ""
  out "| step | val loss (nats) | val bits/byte |"
  out "|---|---|---|"
  grep '"split": "val"' "$RUNS/mamba2_text/metrics.jsonl" | while read -r line; do
    out "| $(field step "$line") | $(num "$(field loss "$line")") | $(num "$(field bpb "$line")") |"
  done
  out ""
fi

echo "results: $RESULTS" >&2
