#!/usr/bin/env bash
# `ssmtrain train ... | head -n 1`: the reader goes away after the first line. The run must
# outlive its closed stdout (SIGPIPE ignored), exit 0 and save its final checkpoint; before
# the fix SIGPIPE killed it at the next log line with no checkpoint.
# Usage: tests/train/pipe_check.sh path/to/ssmtrain
set -uo pipefail
bin="${1:?usage: pipe_check.sh path/to/ssmtrain}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/tiny.yaml" <<'YAML'
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
budget: {steps: 30}
train: {batch_size: 2, seq_len: 24, log_every: 1, eval_every: 0, sample_tokens: 0}
YAML
"$bin" train "$dir/tiny.yaml" --run-dir "$dir/run" 2> "$dir/stderr" | head -n 1 > /dev/null
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then echo "pipe check: ssmtrain exited $rc with its stdout closed"; cat "$dir/stderr"; exit 1; fi
if [ ! -f "$dir/run/checkpoints/ckpt_00000030.h5" ]; then echo "pipe check: no final checkpoint"; ls -R "$dir/run"; exit 1; fi
if ! grep -q "done: 30 steps" "$dir/run/train.log"; then echo "pipe check: train.log lacks the end of the run"; exit 1; fi
echo "pipe check: the run finished with its stdout closed, final checkpoint saved"
