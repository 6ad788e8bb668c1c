#!/usr/bin/env bash
# Data parallelism on the CPU: `mpirun -np 2` with batch B per rank must train like one
# process with batch 2B. The ranks read disjoint halves of each global batch and average
# their gradients, so the logged losses agree to f32 rounding of the summation order.
set -euo pipefail
bin="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
cat > "$work/tiny.yaml" <<'YAML'
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
optim: {lr: 0.01}
schedule: {kind: cosine, warmup_steps: 2, min_lr: 0.001}
budget: {steps: 6}
train: {batch_size: 4, seq_len: 24, log_every: 1, eval_every: 0, eval_batches: 1, threads: 1}
YAML
mpirun -np 2 "$bin" train "$work/tiny.yaml" --quiet --run-dir "$work/two"
"$bin" train "$work/tiny.yaml" --quiet --run-dir "$work/one" train.batch_size=8
losses() { grep -v '"split"' "$1/metrics.jsonl" | sed -E 's/.*"step": ([0-9]+).*"tokens": ([0-9]+).*"loss": ([-0-9.eE+]+).*/\1 \2 \3/'; }
paste <(losses "$work/one") <(losses "$work/two") | awk '
  { n++; if ($1 != $4 || $2 != $5) { print "step/tokens differ: " $0; bad = 1 }
    d = $3 - $6; if (d < 0) d = -d
    # Losses are means over 8 sequences in f32; the two runs differ only in summation
    # order, and after 6 AdamW steps that moves the loss by a few ulps (~1e-7 relative).
    if (d > 1e-5 * $3) { print "loss differs: " $0; bad = 1 } }
  END { if (n != 6) { print "expected 6 records, got " n; bad = 1 } exit bad }'
echo "mpi check: 2 ranks x batch 4 == 1 rank x batch 8 over 6 steps"
