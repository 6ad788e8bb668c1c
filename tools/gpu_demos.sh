#!/usr/bin/env bash
# The capability demos on one GPU, all at once: the runs are small and launch-bound, so
# they share the GPU well (each process gets 2 CPU threads, waiting passively). Each
# training run is capped at LIMIT seconds (its evaluations up to then are in its
# metrics.jsonl); induction heads is then evaluated at 2^8 .. 2^16.
#
#   tools/gpu_demos.sh OUTDIR
#
# Environment: SSMTRAIN (binary), GCIDE (the gcide text), LIMIT (seconds per run, 400),
# PARTS (any of: selective_copy induction text; default all three), and extra overrides
# per part: SC_ARGS, INDUCTION_ARGS, TEXT_ARGS (space-separated key=value). SC2_ARGS, when
# set, runs the four selective-copying configs a second time with those overrides (run
# names end in _2), e.g. SC2_ARGS="train.seq_len=256 train.batch_size=64". MPS (default 1)
# starts the CUDA multi-process service first, so the small runs' kernels overlap instead of
# time-slicing the GPU (MPS=0 to skip it). Progress while it runs: runs/<name>/metrics.jsonl under /tmp/demos.
set -uo pipefail
out="${1:?usage: tools/gpu_demos.sh OUTDIR}"
cd "$(dirname "$0")/.."
bin="${SSMTRAIN:-build-gpu/ssmtrain}"
text="data.path=${GCIDE:-/usr/share/dictd/gcide.dict.dz}"
limit="${LIMIT:-400}"
parts="${PARTS:-selective_copy induction text}"
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive
runs=/tmp/demos
rm -rf "$runs"
mkdir -p "$out" "$runs"
if [ "${MPS:-1}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && echo "MPS started" || echo "MPS not available; runs time-slice the GPU"
fi
start=$(date +%s)
launch() {  # name, config, extra args...
  local n="$1" c="$2"
  shift 2
  timeout "$limit" "$bin" train "configs/$c.yaml" --quiet --run-dir "$runs/$n" train.threads=2 "$@" > "$runs/$n.out" 2>&1 &
  names+=("$n")
}
names=()
if [[ " $parts " == *" selective_copy "* ]]; then
  for c in selective_copy_mamba selective_copy_s6 selective_copy_s4 selective_copy_mamba_lti; do
    launch "$c" "$c" ${SC_ARGS:-}
    [ -n "${SC2_ARGS:-}" ] && launch "${c}_2" "$c" $SC2_ARGS
  done
fi
[[ " $parts " == *" induction "* ]] && launch induction_mamba induction_mamba ${INDUCTION_ARGS:-}
if [[ " $parts " == *" text "* ]]; then
  launch mamba_text mamba_text "$text" ${TEXT_ARGS:-}
  launch moe_mamba_text moe_mamba_text "$text" ${TEXT_ARGS:-}
fi
wait
[ "${MPS:-1}" = 1 ] && echo quit | nvidia-cuda-mps-control
echo "training wall time: $(( $(date +%s) - start )) s" > "$out/demos.txt"
for c in "${names[@]}"; do
  echo "== $c" >> "$out/demos.txt"
  cat "$runs/$c.out" >> "$out/demos.txt"
  grep -E '"split"' "$runs/$c/metrics.jsonl" >> "$out/demos.txt" 2>/dev/null
  grep -v '"split"' "$runs/$c/metrics.jsonl" 2>/dev/null | tail -1 >> "$out/demos.txt"
done
ckpt=$(ls "$runs"/induction_mamba/checkpoints/ckpt_*.h5 2>/dev/null | tail -1)
if [ -n "$ckpt" ]; then
  echo "== induction heads evaluated at longer lengths ($ckpt)" >> "$out/demos.txt"
  for n in 256 1024 4096 16384 65536; do
    echo "-- eval_seq_len $n" >> "$out/demos.txt"
    timeout 120 "$bin" eval "$ckpt" data.eval_seq_len=$n train.batch_size=16 --batches 8 >> "$out/demos.txt" 2>&1
  done
fi
grep -E "^==|^--|acc|accuracy|bpb|wall|error" "$out/demos.txt" | cut -c1-220
