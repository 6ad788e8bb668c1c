#!/usr/bin/env bash
# A checkpoint save that runs out of space: the run must exit 1 with a message naming the
# checkpoint and the reason, leave no temp file, keep the previous checkpoint valid, and a
# later `--resume auto` must continue from that checkpoint.
#
# The full disk is simulated without root: the saving run gets a file size limit
# (RLIMIT_FSIZE, `ulimit -f`) smaller than a checkpoint but larger than its logs, with
# SIGXFSZ ignored, so its checkpoint write fails with EFBIG exactly where a full disk gives
# ENOSPC. Before the checkpoint writer built its file in memory, HDF5 reported the failed
# write and then crashed (SIGSEGV, exit 139) in its exit-time cleanup of the file whose
# close had failed.
# Usage: tests/train/disk_full_check.sh path/to/ssmtrain
set -uo pipefail
bin="${1:?usage: disk_full_check.sh path/to/ssmtrain}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "disk-full check: $*"; exit 1; }

cat > "$dir/tiny.yaml" <<'YAML'
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
budget: {steps: 4}
train: {batch_size: 2, seq_len: 24, log_every: 1, eval_every: 0, sample_tokens: 0, checkpoint_every: 2}
YAML
run="$dir/run"
ckpts="$run/checkpoints"
first="$ckpts/ckpt_00000002.h5"
second="$ckpts/ckpt_00000004.h5"

# 1. A good checkpoint at step 2, written without a limit.
"$bin" train "$dir/tiny.yaml" --run-dir "$run" --max-steps 2 --quiet > "$dir/first.out" 2>&1 ||
  { cat "$dir/first.out"; fail "the first run (steps 1-2) failed"; }
[ -f "$first" ] || fail "the first run left no $first"
first_sum=$(cksum < "$first")

# 2. Resume to step 4 with files limited to 32 KiB: the save at step 4 cannot be written.
limit_kib=32
[ "$(stat -c %s "$first")" -gt $((limit_kib * 1024)) ] ||
  fail "a checkpoint of the tiny model is no larger than ${limit_kib} KiB; raise the model size"
(
  trap '' XFSZ
  ulimit -f "$limit_kib"
  exec "$bin" train "$dir/tiny.yaml" --run-dir "$run" --resume auto --quiet
) > "$dir/full.out" 2>&1
rc=$?
echo "--- output of the run whose save failed (exit $rc):"
cat "$dir/full.out"
echo "---"
if [ "$rc" -gt 128 ]; then fail "the run was killed by signal $((rc - 128)) (exit $rc) instead of exiting 1"; fi
[ "$rc" -eq 1 ] || fail "expected exit code 1, got $rc"
grep -q "ckpt_00000004.h5" "$dir/full.out" || fail "the message does not name the checkpoint being written"
grep -q "File too large" "$dir/full.out" || fail "the message does not give the reason (File too large)"
leftovers=$(find "$ckpts" -name '*.tmp')
[ -z "$leftovers" ] || fail "temp files left behind: $leftovers"
[ ! -e "$second" ] || fail "$second exists although its save failed"
[ "$(cksum < "$first")" = "$first_sum" ] || fail "$first changed while the next save failed"

# 3. With space again, --resume auto continues from step 2 and finishes.
"$bin" train "$dir/tiny.yaml" --run-dir "$run" --resume auto --quiet > "$dir/resume.out" 2>&1 ||
  { cat "$dir/resume.out"; fail "the resume after the failed save failed"; }
grep -q "resumed from $first at step 2" "$run/train.log" || fail "train.log does not show a resume from $first"
[ -f "$second" ] || fail "the resumed run left no $second"
echo "disk-full check: exit 1 naming the file, no temp file, $first intact and resumed"
