#!/usr/bin/env bash
# On a GPU host: build, run every CUDA test, the benchmarks and the quickstart on the GPU.
# Usage: tools/gpu_check.sh OUTDIR [build|tests|bench|train|configs]...   (default: all five)
# configs: every shipped config (configs/*.yaml) trains 10 steps on the GPU, so that a mixer
# whose CUDA path a change broke (the op tests cover ops, not every block) shows as a nonzero
# exit in OUTDIR/configs.txt (the run's output in OUTDIR/config_NAME.txt).
# Each stage has its own time limit so one slow stage cannot starve the others.
set -uo pipefail
out="${1:?usage: tools/gpu_check.sh OUTDIR [stages...]}"
shift
stages="${*:-build tests bench train configs}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
has() { [[ " $stages " == *" $1 "* ]]; }
if has build; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$out/build.txt" 2>&1
  { time (cmake -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j"$(nproc)"); } >> "$out/build.txt" 2>&1 \
    || { tail -60 "$out/build.txt"; exit 1; }
  tail -4 "$out/build.txt"
fi
if has tests; then
  for t in core nn optim ssm train; do
    echo "== test_$t (CUDA cases)" >> "$out/tests.txt"
    filter=(-sf='*cuda*')
    [ "$t" = nn ] && filter=()  # nn's few device cases sit beside the CPU ones
    [ "$t" = train ] && filter=(-tc='*CUDA*')
    timeout 300 ./build-gpu/test_$t "${filter[@]}" >> "$out/tests.txt" 2>&1
    echo "   exit $?" >> "$out/tests.txt"
  done
  grep -E "^== |test cases|exit" "$out/tests.txt"
fi
if has bench; then
  timeout 240 ./build-gpu/ssmtrain-bench core --json "$out/bench_core.json" > "$out/bench.txt" 2>&1; echo "core exit $?" >> "$out/bench.txt"
  timeout 240 ./build-gpu/ssmtrain-bench ssm --json "$out/bench_ssm.json" >> "$out/bench.txt" 2>&1; echo "ssm exit $?" >> "$out/bench.txt"
  cat "$out/bench.txt"
fi
if has train; then
  # GCIDE: where the quickstart text is on this host (default: Debian's dict-gcide path).
  text="data.path=${GCIDE:-/usr/share/dictd/gcide.dict.dz}"
  rm -rf /tmp/q /tmp/m2
  { time timeout 240 ./build-gpu/ssmtrain train configs/quickstart.yaml train.device=cuda "$text" --run-dir /tmp/q; } > "$out/train.txt" 2>&1
  echo "quickstart on cuda exit $?" >> "$out/train.txt"
  { time timeout 240 ./build-gpu/ssmtrain train configs/mamba2_text.yaml "$text" budget.steps=${MAMBA2_STEPS:-400} --run-dir /tmp/m2; } >> "$out/train.txt" 2>&1
  echo "mamba2 text exit $?" >> "$out/train.txt"
  grep -E "exit|budget:|eval step|done|real|resume check|error" "$out/train.txt"
fi
if has configs; then
  text="data.path=${GCIDE:-/usr/share/dictd/gcide.dict.dz}"
  for c in configs/*.yaml; do
    name=$(basename "$c" .yaml)
    args=(train.device=cuda budget.steps=10 schedule.warmup_steps=2 train.eval_every=10 train.checkpoint_every=10)
    grep -q '^  path:' "$c" && args+=("$text")
    rm -rf "/tmp/smoke_$name"
    timeout 120 ./build-gpu/ssmtrain train "$c" "${args[@]}" --quiet --run-dir "/tmp/smoke_$name" > "$out/config_$name.txt" 2>&1
    echo "$name: exit $?" | tee -a "$out/configs.txt"
  done
fi
