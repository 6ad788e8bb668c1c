#!/usr/bin/env bash
# The capability demos on one GPU, all at once: the runs are small and launch-bound, so
# they share the GPU well. Each training run is capped at LIMIT seconds (its evaluations up to
# then are in its metrics.jsonl); induction heads is then evaluated at 2^10 .. 2^16.
# Usage: tools/gpu_demos.sh OUTDIR [key=value ...]   (env: SSMTRAIN, GCIDE, LIMIT)
set -uo pipefail
out="${1:?usage: tools/gpu_demos.sh OUTDIR}"
shift
cd "$(dirname "$0")/.."
bin="${SSMTRAIN:-build-gpu/ssmtrain}"
text="data.path=${GCIDE:-/usr/share/dictd/gcide.dict.dz}"
limit="${LIMIT:-400}"
runs=/tmp/demos
rm -rf "$runs"
mkdir -p "$out" "$runs"
start=$(date +%s)
for c in selective_copy_mamba selective_copy_s6 selective_copy_s4 selective_copy_mamba_lti induction_mamba; do
  timeout "$limit" "$bin" train "configs/$c.yaml" --quiet --run-dir "$runs/$c" "$@" > "$runs/$c.out" 2>&1 &
done
for c in mamba_text moe_mamba_text; do
  timeout "$limit" "$bin" train "configs/$c.yaml" "$text" --quiet --run-dir "$runs/$c" "$@" > "$runs/$c.out" 2>&1 &
done
wait
echo "training wall time: $(( $(date +%s) - start )) s" > "$out/demos.txt"
for c in selective_copy_mamba selective_copy_s6 selective_copy_s4 selective_copy_mamba_lti induction_mamba mamba_text moe_mamba_text; do
  echo "== $c" >> "$out/demos.txt"
  cat "$runs/$c.out" >> "$out/demos.txt"
  grep -E '"split"' "$runs/$c/metrics.jsonl" >> "$out/demos.txt" 2>/dev/null
  tail -1 "$runs/$c/metrics.jsonl" >> "$out/demos.txt" 2>/dev/null
done
ckpt=$(ls "$runs"/induction_mamba/checkpoints/ckpt_*.h5 2>/dev/null | tail -1)
if [ -n "$ckpt" ]; then
  echo "== induction heads evaluated at longer lengths ($ckpt)" >> "$out/demos.txt"
  for n in 256 1024 4096 16384 65536; do
    echo "-- eval_seq_len $n" >> "$out/demos.txt"
    timeout 120 "$bin" eval "$ckpt" data.eval_seq_len=$n train.batch_size=16 --batches 8 >> "$out/demos.txt" 2>&1
  done
fi
cat "$out/demos.txt" | grep -E "^==|^--|acc|accuracy|bpb|wall" | cut -c1-200
