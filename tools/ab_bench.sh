#!/usr/bin/env bash
# A/B timing of code changes on a GPU host, in one build directory. Variant v0 is the working
# tree; v1 is v0 with PATCH1 reversed, v2 is v1 with PATCH2 reversed, and so on (a patch is
# the `git diff` of one change, applied to the tree). Only the files a patch touches are
# rebuilt for the next variant, and each variant's ssmtrain-bench is kept aside; then the
# bench rows of all variants run alternately, twice, so that drift of the machine falls on
# all of them alike. A table of the rows prints last; the tree is restored at the end. Stopped
# by SIGTERM (e.g. `timeout` inside a limited call), it restores the tree and prints the table
# of the rows measured so far, and exits 124.
#
# Usage: tools/ab_bench.sh OUTDIR [PATCH...]
#   SSM_ONLY    `ssmtrain-bench ssm --only` filter (default "ssd_chunked"; empty: no ssm rows)
#   TRAIN_ONLY  `ssmtrain-bench train --only` filter, run for v0 and the last variant
#               (default "mamba2 24x768 (129M)"; empty: no train rows)
#   TESTS       test_ssm case filter run on v0 before any timing (default: the SSD and
#               Mamba-2 cases; empty: none)
#   RACECHECK   test_ssm case filter run on v0 under `compute-sanitizer --tool racecheck`
#               after the tests (default: none; e.g. '*over their tilings*')
#   BUILD       build directory (default /tmp/ab-build, outside the tree so that it survives
#               a re-copied tree on the same host). It is left holding the last variant's
#               objects, newer than the restored sources: before building v0 from it again
#               (another call on a re-copied tree), touch the patched files, or ninja keeps
#               the last variant's code.
# Example (docs/perf_ssm.md, "Factored decays, straight-line tile staging"):
#   git diff > /tmp/staging.patch   # the change under test, in the working tree
#   tools/ab_bench.sh /tmp/ab /tmp/staging.patch
set -uo pipefail
out="${1:?usage: tools/ab_bench.sh OUTDIR [PATCH...]}"
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
ssm_only="${SSM_ONLY-ssd_chunked}"
train_only="${TRAIN_ONLY-mamba2 24x768 (129M)}"
tests="${TESTS-*ssd*,*mamba2*,*Mamba2*}"
build="${BUILD:-/tmp/ab-build}"
patches=()
for p in "$@"; do
  [ -f "$p" ] || { echo "ab_bench: no patch '$p'"; exit 2; }
  patches+=("$(cd "$(dirname "$p")" && pwd)/$(basename "$p")")
done
cd "$(dirname "$0")/.."

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cmake -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release > "$out/configure.txt" 2>&1 || { tail -20 "$out/configure.txt"; exit 1; }
racecheck="${RACECHECK:-}"
targets=(ssmtrain-bench)
[ -n "$tests$racecheck" ] && targets+=(test_ssm)
{ time cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"; } > "$out/build_v0.txt" 2>&1 || { tail -30 "$out/build_v0.txt"; exit 1; }
mkdir -p "$out/v0" && cp "$build/ssmtrain-bench" "$out/v0/"
if [ -n "$tests" ]; then
  timeout "${TEST_LIMIT:-300}" "$build/test_ssm" -tc="$tests" > "$out/tests_v0.txt" 2>&1
  echo "v0 tests ($tests): exit $?; $(grep -E 'test cases' "$out/tests_v0.txt" | tail -1)"
fi
if [ -n "$racecheck" ]; then
  timeout "${TEST_LIMIT:-300}" compute-sanitizer --tool racecheck --error-exitcode 1 "$build/test_ssm" -tc="$racecheck" > "$out/racecheck_v0.txt" 2>&1
  echo "v0 racecheck ($racecheck): exit $?; $(grep -E 'RACECHECK SUMMARY' "$out/racecheck_v0.txt" | tail -1)"
fi

# Re-applies the reversed patches (once), so that the tree is as it was.
restore() {
  for p in "${applied[@]}"; do git apply "$p" || echo "ab_bench: could not re-apply $p: restore the tree by hand"; done
  [ "${#applied[@]}" -gt 0 ] &&
    touch $(for p in "${patches[@]}"; do grep '^+++ b/' "$p" | sed 's#^+++ b/##'; done) 2>/dev/null
  applied=()
}
# The table of what has been measured (also on SIGTERM, with the rows timed so far).
table() {
  echo "== ms per row, rounds 1 | 2, variants ${variants[*]}"
  if [ -n "$ssm_only" ] && [ -f "$out/ssm_v0_1.txt" ]; then
    # The progress lines "  <bench> <shape>: <ms> ms" of the first round name the rows.
    grep -E '^  .*: [0-9.]+ ms$' "$out/ssm_v0_1.txt" | sed 's/^  \(.*\): [0-9.]* ms$/\1/' | while read -r row; do
      line="$row:"
      for r in 1 2; do
        for v in "${variants[@]}"; do
          ms=$(grep -F "  $row: " "$out/ssm_${v}_$r.txt" 2>/dev/null | head -1 | sed 's/.*: \([0-9.]*\) ms$/\1/')
          line="$line $ms"
        done
        line="$line |"
      done
      echo "$line"
    done
  fi
  if [ -n "$train_only" ]; then
    for f in "$out"/train_*.txt; do
      [ -f "$f" ] && echo "$(basename "$f" .txt): $(grep -F "$train_only" "$f" | tail -1)"
    done
  fi
}
# A trap runs inside whatever redirection the interrupted command had: it writes to fd 3, the
# script's own standard output.
exec 3>&1
trap 'echo "ab_bench: stopped (SIGTERM) while building the variants" >&3; restore >&3 2>&1; exit 124' TERM

variants=(v0)
applied=()
n=0
for p in "${patches[@]}"; do
  n=$((n + 1))
  git apply -R "$p" || { echo "ab_bench: cannot reverse $p"; break; }
  applied=("$p" "${applied[@]}")
  touch $(grep '^+++ b/' "$p" | sed 's#^+++ b/##')  # rebuilt even if the timestamps say otherwise
  { time cmake --build "$build" -j"$(nproc)" --target ssmtrain-bench; } > "$out/build_v$n.txt" 2>&1 \
    || { tail -30 "$out/build_v$n.txt"; break; }
  mkdir -p "$out/v$n" && cp "$build/ssmtrain-bench" "$out/v$n/"
  variants+=("v$n")
done
restore

last="${variants[-1]}"
trap 'echo "ab_bench: stopped (SIGTERM); the rows measured so far:" >&3; table >&3 2>&1; exit 124' TERM
for r in 1 2; do
  for v in "${variants[@]}"; do
    [ -n "$ssm_only" ] && timeout 300 "$out/$v/ssmtrain-bench" ssm --only "$ssm_only" > "$out/ssm_${v}_$r.txt" 2>&1
    if [ -n "$train_only" ] && { [ "$v" = v0 ] || [ "$v" = "$last" ]; }; then
      timeout 300 "$out/$v/ssmtrain-bench" train --only "$train_only" > "$out/train_${v}_$r.txt" 2>&1
    fi
  done
done

table
