#!/usr/bin/env bash
# On a GPU host: build into a folder that survives between calls, then measure whole training
# steps (ssmtrain-bench train) with the profiler's table for the 129M Mamba step.
# Usage: tools/perf_train.sh OUTDIR [build] [tests] [before] [profile] [full] [configs] [numerics] [ab]
#   build     configure + build ssmtrain, ssmtrain-bench and the test binaries
#   tests     the CUDA test cases of every layer
#   before    the 129M row with the unfused head (full f32-stat logits + cross-entropy), profiled
#   profile   the 129M row as shipped, profiled (profile_*.json written to OUTDIR)
#   full      every row of the train family, JSON report in OUTDIR/bench_train.json
#   configs   every shipped config trained on the GPU by `ssmtrain train` (this build, and
#             OLD_BUILD's when set): median tokens/s of the logged windows after step 20
#   numerics  200 steps of configs/mamba_text.yaml at two seeds, with this build and (when
#             OLD_BUILD names the build folder of an earlier commit) with that one
#   ab        before/after on one card: the bench rows matching ROWS (default the 129M Mamba
#             row) with OLD_BUILD's ssmtrain-bench and this build's, alternated REPS times
#             (default 2). With OLD_SRC (a source tree of the earlier commit, e.g. unpacked
#             from `git archive REV`), OLD_BUILD (default /tmp/build-old) is built from it
#             first, beside this build. BENCH_ARGS: more options for the bench (e.g. --quick)
# BUILD (default /tmp/build-gpu), TARGETS (build only these), TESTS (the test layers) and GCIDE
# (the quickstart text) may be set.
set -uo pipefail
out="${1:?usage: tools/perf_train.sh OUTDIR [stages...]}"
shift
stages="${*:-build tests profile full}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
build="${BUILD:-/tmp/build-gpu}"
has() { [[ " $stages " == *" $1 "* ]]; }
bench="$build/ssmtrain-bench"
if has ab && [ -n "${OLD_SRC:-}" ]; then
  OLD_BUILD="${OLD_BUILD:-/tmp/build-old}"
  ( cmake -S "$OLD_SRC" -B "$OLD_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSSMTRAIN_TESTS=OFF >/dev/null &&
    cmake --build "$OLD_BUILD" -j"$(( $(nproc) / 2 ))" --target ssmtrain-bench ) > "$out/build_old.txt" 2>&1 &
  old_build_pid=$!
fi
if has build; then
  { time (cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null &&
          cmake --build "$build" -j"$(nproc)" ${TARGETS:+--target $TARGETS}); } > "$out/build.txt" 2>&1 || { tail -60 "$out/build.txt"; exit 1; }
  tail -3 "$out/build.txt"
fi
if [ -n "${old_build_pid:-}" ]; then
  wait "$old_build_pid" || { tail -30 "$out/build_old.txt"; exit 1; }
fi
if has tests; then
  for t in ${TESTS:-core nn optim ssm train}; do
    echo "== test_$t (CUDA cases)" >> "$out/tests.txt"
    filter=(-sf='*cuda*')
    [ "$t" = nn ] && filter=()
    [ "$t" = train ] && filter=(-tc='*CUDA*')
    timeout 300 "$build/test_$t" "${filter[@]}" >> "$out/tests.txt" 2>&1
    echo "   exit $?" >> "$out/tests.txt"
  done
  grep -E "^== |test cases|exit|ERROR|FAILED" "$out/tests.txt" | head -40
fi
if has before; then
  timeout 300 "$bench" train --only "mamba 24x768 (129M)" --unfused-head --profile --json "$out/before.json" > "$out/before.txt" 2>&1
  echo "before exit $?"
fi
if has profile; then
  timeout 300 "$bench" train --only "mamba 24x768 (129M)" --profile --json "$out/after.json" > "$out/profile.txt" 2>&1
  echo "profile exit $?"
fi
if has full; then
  timeout 400 "$bench" train --json "$out/bench_train.json" > "$out/bench_train.txt" 2>&1
  echo "full exit $?"
  cat "$out/bench_train.txt"
fi
if has configs; then
  text="data.path=${GCIDE:-/usr/share/dictd/gcide.dict.dz}"
  bins=("new:$build/ssmtrain")
  [ -n "${OLD_BUILD:-}" ] && bins+=("old:$OLD_BUILD/ssmtrain")
  for cfg in quickstart selective_copy_mamba selective_copy_s6 selective_copy_s4 induction_mamba mamba_text \
             mamba2_text moe_mamba_text; do
    steps=200
    case $cfg in mamba2_text|moe_mamba_text|mamba_text) steps=120 ;; esac
    for b in "${bins[@]}"; do
      name="${b%%:*}"; bin="${b#*:}"
      dir="/tmp/cfg_${name}_$cfg"; rm -rf "$dir"
      timeout 120 "$bin" train "configs/$cfg.yaml" "$text" train.device=cuda train.eval_every=0 train.sample_tokens=0 \
        train.log_every=10 --max-steps $steps --run-dir "$dir" --quiet > "$dir.log" 2>&1
      rc=$?
      tps=$(python3 -c "
import json, sys
rows = [json.loads(l) for l in open('$dir/metrics.jsonl')]
t = sorted(r['tokens_per_s'] for r in rows if 'tokens_per_s' in r and r['step'] > 20)
print('%.0f' % t[len(t) // 2] if t else 'none')" 2>/dev/null)
      echo "config $cfg $name exit $rc tokens/s ${tps:-none}" | tee -a "$out/configs.txt"
    done
  done
fi
if has numerics; then
  # The loss curve of 200 steps of configs/mamba_text.yaml (bf16) with this build at two
  # seeds, and with OLD_BUILD's ssmtrain (a build of an earlier commit) at the same two seeds:
  # the seed-to-seed spread is the yardstick for the difference between the builds.
  text="data.path=${GCIDE:-/usr/share/dictd/gcide.dict.dz}"
  common=(configs/mamba_text.yaml "$text" train.eval_every=0 train.log_every=10 train.sample_tokens=0 --max-steps 200)
  runs=("new_s1234:$build/ssmtrain:train.seed=1234" "new_s99:$build/ssmtrain:train.seed=99")
  [ -n "${OLD_BUILD:-}" ] && runs+=("old_s1234:$OLD_BUILD/ssmtrain:train.seed=1234" "old_s99:$OLD_BUILD/ssmtrain:train.seed=99")
  for v in "${runs[@]}"; do
    IFS=: read -r name bin seed <<< "$v"
    rm -rf "/tmp/num_$name"
    timeout 300 "$bin" train "${common[@]}" "$seed" --run-dir "/tmp/num_$name" --quiet > "$out/num_$name.txt" 2>&1
    echo "numerics $name exit $?"
    cp "/tmp/num_$name/metrics.jsonl" "$out/metrics_$name.jsonl" 2>/dev/null
  done
fi
if has ab; then
  [ -x "${OLD_BUILD:-}/ssmtrain-bench" ] || { echo "ab: set OLD_BUILD (or OLD_SRC) to an earlier build"; exit 2; }
  rows="${ROWS:-mamba 24x768 (129M)}"
  for i in $(seq "${REPS:-2}"); do
    for side in old new; do
      b="$bench"; [ $side = old ] && b="$OLD_BUILD/ssmtrain-bench"
      timeout 120 "$b" train --only "$rows" ${BENCH_ARGS:-} > "$out/ab_${side}_$i.txt" 2>&1
      grep -E "^[a-z].*[0-9]x" "$out/ab_${side}_$i.txt" | grep -v "^train step" | sed "s/^/ab $side $i: /"
    done
  done | tee "$out/ab.txt"
fi
