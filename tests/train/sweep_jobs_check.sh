#!/usr/bin/env bash
# `ssmtrain sweep --jobs N`: the runs trained as N concurrent `ssmtrain train` processes give
# the same sweep.jsonl, byte for byte, as the same sweep trained one run after another in one
# process (each run is deterministic on the CPU with one thread); repeating the command reuses
# the finished runs; a run that fails makes the sweep exit non-zero naming it; a bad --jobs
# exits 2.
# Usage: tests/train/sweep_jobs_check.sh path/to/ssmtrain
set -uo pipefail
bin="${1:?usage: sweep_jobs_check.sh path/to/ssmtrain}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "sweep --jobs check: $*"; exit 1; }
cat > "$dir/a.yaml" <<YAML
model: {mixer: mamba, d_model: 8, n_layer: 1, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
schedule: {warmup_steps: 1}
train: {batch_size: 2, seq_len: 16, eval_every: 0, eval_batches: 1, threads: 1, device: cpu, precision: fp32}
YAML
sed 's/mixer: mamba,/mixer: s4d,/' "$dir/a.yaml" > "$dir/b.yaml"
grid="model.d_model=8,16;budget.steps=2,4"

"$bin" sweep "$dir/a.yaml" "$dir/b.yaml" --grid "$grid" --run-dir "$dir/seq" --bootstrap 0 > "$dir/seq.out" 2>&1 ||
  { cat "$dir/seq.out"; fail "the sequential sweep failed"; }
"$bin" sweep "$dir/a.yaml" "$dir/b.yaml" --grid "$grid" --run-dir "$dir/par" --bootstrap 0 --jobs 3 \
  > "$dir/par.out" 2>&1 || { cat "$dir/par.out"; fail "the sweep with --jobs 3 failed"; }
grep -q "started" "$dir/par.out" || fail "--jobs 3 did not start child runs"
# Started in grid order with the families interleaved: a's first combination, then b's.
first=$(grep started "$dir/par.out" | head -2 | sed -E 's/.*started: ([^ ]*) .*/\1/' | tr '\n' ' ')
[ "$first" = "a__model.d_model-8__budget.steps-2 b__model.d_model-8__budget.steps-2 " ] ||
  fail "the first runs started were '$first', expected each family's first combination"
[ "$(grep -c '"name"' "$dir/par/sweep.jsonl")" -eq 8 ] || fail "--jobs 3 recorded $(grep -c . "$dir/par/sweep.jsonl") runs, expected 8"
cmp -s "$dir/seq/sweep.jsonl" "$dir/par/sweep.jsonl" ||
  { diff "$dir/seq/sweep.jsonl" "$dir/par/sweep.jsonl"; fail "--jobs 3 and one run at a time recorded different results"; }
[ -f "$dir/par/scaling.svg" ] || fail "--jobs 3 drew no scaling.svg"

# Repeated: every run is reused (each resumes its final checkpoint and returns at once).
cp "$dir/par/sweep.jsonl" "$dir/first.jsonl"
"$bin" sweep "$dir/a.yaml" "$dir/b.yaml" --grid "$grid" --run-dir "$dir/par" --bootstrap 0 --jobs 3 \
  > "$dir/again.out" 2>&1 || { cat "$dir/again.out"; fail "the repeated sweep failed"; }
cmp -s "$dir/first.jsonl" "$dir/par/sweep.jsonl" || fail "the repeated sweep changed sweep.jsonl"
for r in "$dir"/par/*/metrics.jsonl; do
  [ "$(grep -c '"split": "val"' "$r")" -eq 1 ] || fail "$r: a reused run trained or evaluated again"
done

# --fit-only: trains nothing, and gives the same results from runs whose checkpoints are gone.
rm -rf "$dir"/par/*/checkpoints
"$bin" sweep "$dir/a.yaml" "$dir/b.yaml" --grid "$grid" --run-dir "$dir/par" --bootstrap 0 --fit-only \
  > "$dir/fit.out" 2>&1 || { cat "$dir/fit.out"; fail "--fit-only failed"; }
cmp -s "$dir/first.jsonl" "$dir/par/sweep.jsonl" || fail "--fit-only changed sweep.jsonl"
grep -q "started" "$dir/fit.out" && fail "--fit-only started runs"

# --gpus: job slot k runs on the k-th listed GPU, round robin (CUDA_VISIBLE_DEVICES per child;
# these CPU runs ignore it, the parent says where each run went).
"$bin" sweep "$dir/a.yaml" --grid "$grid" --run-dir "$dir/gpus" --bootstrap 0 --jobs 3 --gpus 0,1 \
  > "$dir/gpus.out" 2>&1 || { cat "$dir/gpus.out"; fail "--gpus 0,1 failed"; }
where=$(grep started "$dir/gpus.out" | head -3 | sed -E 's/.*started on GPU ([0-9]+):.*/\1/' | tr '\n' ' ')
[ "$where" = "0 1 0 " ] || { cat "$dir/gpus.out"; fail "--jobs 3 --gpus 0,1 placed the first runs on '$where', expected 0 1 0"; }
[ "$(grep -c "started on GPU" "$dir/gpus.out")" -eq 4 ] || fail "--gpus: not every run was placed on a GPU"
for bad in "--gpus 0,x --jobs 2" "--gpus 0,1"; do
  "$bin" sweep "$dir/a.yaml" --grid "$grid" --run-dir "$dir/x" $bad > "$dir/g.out" 2>&1
  rc=$?
  [ "$rc" -eq 2 ] && grep -q -- "--gpus" "$dir/g.out" || { cat "$dir/g.out"; fail "'$bad' exited $rc, expected 2 naming --gpus"; }
done

# A run that fails (its data file does not exist): non-zero exit naming the run; the others finish.
"$bin" sweep "$dir/a.yaml" --grid "data.kind=synthetic,text" --run-dir "$dir/bad" --bootstrap 0 --jobs 2 \
  data.path="$dir/missing.txt" > "$dir/bad.out" 2>&1
rc=$?
[ "$rc" -ne 0 ] || fail "a failing run left the sweep's exit code 0"
grep -q "data.kind-text" "$dir/bad.out" || { cat "$dir/bad.out"; fail "the message does not name the failed run"; }
grep -q "data.kind-synthetic finished" "$dir/bad.out" || fail "the other run did not finish"

# A stop signal sent to the sweep alone (`kill PID`, a scheduler's SIGTERM) reaches its
# children: each checkpoints and stops, the sweep exits 0 and no run is marked failed.
"$bin" sweep "$dir/a.yaml" --grid "model.d_model=8,16" --run-dir "$dir/stop" --bootstrap 0 --jobs 2 \
  budget.steps=1000000 train.checkpoint_every=0 > "$dir/stop.out" 2>&1 &
pid=$!
# Both runs are in their training loop (stop handlers installed) once they have logged step 1.
for _ in $(seq 300); do
  [ "$(find "$dir/stop" -name metrics.jsonl -size +0 2>/dev/null | wc -l)" -eq 2 ] && break
  sleep 0.1
done
sleep 0.2
kill -TERM "$pid"
( sleep 60; kill -KILL "$pid" 2>/dev/null ) &  # a watchdog, should the stop hang
wait "$pid"
rc=$?
[ "$rc" -eq 0 ] || { cat "$dir/stop.out"; fail "the stopped sweep exited $rc, expected 0"; }
grep -q FAILED "$dir/stop.out" && { cat "$dir/stop.out"; fail "a stopped run was reported as failed"; }
for r in "$dir"/stop/*/; do
  ls "$r" | grep -q '\.h5$' || ls "$r"/* | grep -q '\.h5$' || { ls -R "$r"; fail "$r: the stopped run saved no checkpoint"; }
done

# --fit-only over runs that were stopped before their budget: exit 2 naming a run.
"$bin" sweep "$dir/a.yaml" --grid "model.d_model=8,16" --run-dir "$dir/stop" --bootstrap 0 --fit-only \
  budget.steps=1000000 train.checkpoint_every=0 > "$dir/fit2.out" 2>&1
rc=$?
[ "$rc" -eq 2 ] && grep -q "model.d_model-" "$dir/fit2.out" ||
  { cat "$dir/fit2.out"; fail "--fit-only over unfinished runs exited $rc, expected 2 naming the run"; }

"$bin" sweep "$dir/a.yaml" --grid "$grid" --run-dir "$dir/x" --jobs 0 > "$dir/j.out" 2>&1
rc=$?
[ "$rc" -eq 2 ] && grep -q -- "--jobs" "$dir/j.out" || { cat "$dir/j.out"; fail "--jobs 0 exited $rc, expected 2 naming --jobs"; }
echo "sweep --jobs check: passed"
