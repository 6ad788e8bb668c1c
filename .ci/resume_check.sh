#!/usr/bin/env bash
# Exact resume, end to end through the CLI: the quickstart with a reduced budget trained
# straight through, and the same run stopped half way (--max-steps) and resumed
# (--resume auto), must log bitwise identical losses and end with bitwise identical
# parameters and optimizer state. Then: a corrupt newest checkpoint is skipped in favour of
# the previous one, and bad input exits 2 without touching the run directory.
set -euo pipefail
bin="${1:-build/ssmtrain}"
shift || true
extra=("$@")  # more overrides, e.g. train.device=cuda
cfg=configs/quickstart.yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
short=(budget.steps=24 train.log_every=1 train.eval_every=12 train.checkpoint_every=12 train.keep_last=0
       train.eval_batches=2 train.sample_tokens=16 train.batch_size=4 train.seq_len=64 "${extra[@]}")

"$bin" train "$cfg" --quiet --run-dir "$work/straight" "${short[@]}"
"$bin" train "$cfg" --quiet --run-dir "$work/resumed" --max-steps 12 "${short[@]}"
"$bin" train "$cfg" --quiet --run-dir "$work/resumed" --resume auto "${short[@]}"

losses() {  # "step loss" of every training record
  grep -v '"split"' "$1/metrics.jsonl" | sed -E 's/.*"step": ?([0-9]+).*"loss": ?([-0-9.eE+na]+).*/\1 \2/'
}
if ! diff <(losses "$work/straight") <(losses "$work/resumed"); then
  echo "resume check: the resumed run logged different losses"; exit 1
fi
n=$(losses "$work/straight" | wc -l)
[ "$n" -eq 24 ] || { echo "resume check: expected 24 loss records, found $n"; exit 1; }
final=checkpoints/ckpt_00000024.h5
for group in /model /optim; do
  if ! h5diff "$work/straight/$final" "$work/resumed/$final" "$group" "$group"; then
    echo "resume check: $group differs between the straight and the resumed run"; exit 1
  fi
done
echo "resume check: 24 losses and the final model and optimizer state are bitwise identical"

# A truncated newest checkpoint is reported and skipped; the run resumes from step 12.
head -c 2000 "$work/resumed/$final" > "$work/resumed/$final.cut" && mv "$work/resumed/$final.cut" "$work/resumed/$final"
"$bin" train "$cfg" --quiet --run-dir "$work/resumed" --resume auto "${short[@]}" 2> "$work/stderr.txt"
grep -q "ckpt_00000024.h5" "$work/stderr.txt" || { echo "resume check: the corrupt checkpoint was not named"; cat "$work/stderr.txt"; exit 1; }
if ! h5diff "$work/straight/$final" "$work/resumed/$final" /model /model; then
  echo "resume check: resuming past a corrupt checkpoint did not reproduce the run"; exit 1
fi
echo "resume check: a truncated checkpoint is named, skipped, and the run redone from step 12"

# Bad input: exit code 2, a message naming the key, and the run directory left as it was.
before=$(ls -l "$work/resumed/checkpoints" | md5sum)
set +e
"$bin" train "$cfg" --quiet --run-dir "$work/resumed" --resume auto "${short[@]}" model.d_modle=64 2> "$work/stderr.txt"
rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "resume check: a bad key exited $rc, not 2"; exit 1; }
grep -q "d_model" "$work/stderr.txt" || { echo "resume check: the error does not suggest model.d_model"; cat "$work/stderr.txt"; exit 1; }
[ "$before" = "$(ls -l "$work/resumed/checkpoints" | md5sum)" ] || { echo "resume check: bad input touched the checkpoints"; exit 1; }
echo "resume check: a misspelt key exits 2 with a suggestion and touches nothing"
