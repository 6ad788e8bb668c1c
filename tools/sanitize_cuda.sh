#!/usr/bin/env bash
# On a GPU host: run NVIDIA compute-sanitizer (memcheck, racecheck, synccheck) over the CUDA
# test cases of a CUDA build and print one summary line per tool and test binary
# (docs/testing.md).
#
# Usage: tools/sanitize_cuda.sh BUILD_DIR [OUTDIR]
#   BUILD_DIR  a CUDA build (cmake -B BUILD_DIR -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo,
#              then cmake --build BUILD_DIR); its test_* binaries are run
#   OUTDIR     where the full sanitizer logs go (default: BUILD_DIR/sanitize-cuda)
# Environment:
#   TOOLS             tools to run (default: "memcheck racecheck synccheck")
#   TESTS             test binaries (default: "test_core test_optim test_ssm test_train"; test_nn
#                     has no CUDA case: its layers' device paths are tested in test_core/test_ssm)
#   CASES             doctest test-case filter (default: '*cuda*,*CUDA*')
#   EXCLUDE           test cases left out (doctest -tce). Default: the cases that hold the compute
#                     stream and assert that the host did not wait for it; every tool serialises
#                     the host with the device, so they fail by design under it (they run in the
#                     ordinary test suite)
#   TIMEOUT           seconds per tool and binary (default: 3600; racecheck is the slowest)
#   PRINT_LIMIT       reports printed per run (default: 1000000, so none is hidden behind others)
#   LIBRARY_KERNELS   extended regex of kernel names that belong to CUDA libraries (cuBLAS's
#                     nvjet/xmma/cutlass GEMMs, NCCL); reports naming only such kernels give the
#                     verdict "library only" (see docs/testing.md), not "FINDINGS"
#   COMPUTE_SANITIZER the compute-sanitizer executable (default: from PATH or the CUDA toolkit)
#   SANITIZER_ARGS    more compute-sanitizer options for every run. Not "--kernel-name-exclude"
#                     with racecheck: with it the sanitizer stops at the first case with "Internal
#                     Sanitizer Error ... hardware exception" (seen on an H100, driver 580); narrow
#                     a racecheck run with CASES instead (docs/testing.md)
# Exit status: 0 when every run finished with no sanitizer error and no failed test case.
set -uo pipefail

build="${1:?usage: tools/sanitize_cuda.sh BUILD_DIR [OUTDIR]}"
out="${2:-$build/sanitize-cuda}"
tools="${TOOLS:-memcheck racecheck synccheck}"
tests="${TESTS:-test_core test_optim test_ssm test_train}"
cases="${CASES:-*cuda*,*CUDA*}"
exclude="${EXCLUDE:-*does not wait for the device*,*while the device is held*,*while the previous skip flag*}"
limit="${TIMEOUT:-3600}"
print_limit="${PRINT_LIMIT:-1000000}"
library_kernels="${LIBRARY_KERNELS:-^(nvjet_|cutlass|xmma|sm[0-9]+_xmma|ampere_|hopper_|gemv|gemmSN|gemmk|splitKreduce|cublas|nccl)}"

# "COUNT KERNEL" for every kernel the reports of a log name (the first "at NAME+0x" line of
# each report); reports about host API calls count under "(no kernel named)".
tally() {
  awk '
    /^========= [A-Z]/ {
      if (open_ && name == "") count["(no kernel named)"]++
      if ($0 ~ /COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|Target application/) { open_ = 0; next }
      open_ = 1; name = ""; next
    }
    open_ && name == "" && match($0, /[ \t]at .*\+0x[0-9a-fA-F]+/) {
      name = substr($0, RSTART + 4, RLENGTH - 4)
      sub(/\+0x[0-9a-fA-F]+$/, "", name)
      sub(/\([^()]*\)$/, "", name)  # the parameter list
      count[name]++
    }
    END { if (open_ && name == "") count["(no kernel named)"]++; for (k in count) print count[k], k }
  ' "$1" | sort -rn
}

sanitizer="${COMPUTE_SANITIZER:-}"
if [ -z "$sanitizer" ]; then
  for candidate in "$(command -v compute-sanitizer 2>/dev/null)" \
                   /usr/local/cuda/bin/compute-sanitizer \
                   /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then sanitizer="$candidate"; break; fi
  done
fi
[ -n "$sanitizer" ] || { echo "sanitize_cuda: compute-sanitizer not found (set COMPUTE_SANITIZER)"; exit 2; }
[ -d "$build" ] || { echo "sanitize_cuda: no build directory '$build'"; exit 2; }
mkdir -p "$out"

# Options per tool. racecheck reports every hazard, warnings included. memcheck runs without
# --leak-check: the caching allocator keeps its segments to the end of the process on purpose
# (core/cuda/allocator.cu), which a leak check would count as errors. memcheck sees the
# allocator's blocks, not the tensors in them: an overrun that stays inside its block is
# invisible to it; the CPU comparisons in the tests catch those by their results.
tool_options() {
  case "$1" in
    racecheck) echo "--racecheck-report all" ;;
    *) echo "" ;;
  esac
}

status=0
summary="$out/summary.txt"
: > "$summary"
for tool in $tools; do
  for t in $tests; do
    bin="$build/$t"
    if [ ! -x "$bin" ]; then
      line=$(printf '%-10s %-11s missing (%s not built)' "$tool" "$t" "$bin")
      echo "$line" | tee -a "$summary"
      status=1
      continue
    fi
    log="$out/${tool}_${t}.log"
    start=$(date +%s)
    # shellcheck disable=SC2046  # tool_options is a list of words on purpose
    timeout "$limit" "$sanitizer" --tool "$tool" $(tool_options "$tool") ${SANITIZER_ARGS:-} --target-processes all \
      --print-limit "$print_limit" --error-exitcode 86 "$bin" -tc="$cases" -tce="$exclude" > "$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    # The sanitizer's own count: "ERROR SUMMARY: N errors" (memcheck, synccheck) or
    # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)".
    errors=$(grep -oE 'ERROR SUMMARY: [0-9]+ error' "$log" | tail -1 | grep -oE '[0-9]+')
    hazards=$(grep -oE 'RACECHECK SUMMARY: [0-9]+ hazard' "$log" | tail -1 | grep -oE '[0-9]+')
    cases_line=$(grep -E '^\[doctest\] test cases:' "$log" | tail -1 | sed 's/^\[doctest\] //')
    tally "$log" > "$out/${tool}_${t}.kernels"
    ours=$(awk -v lib="$library_kernels" '$2 !~ lib { n += $1 } END { print n + 0 }' "$out/${tool}_${t}.kernels")
    theirs=$(awk -v lib="$library_kernels" '$2 ~ lib { n += $1 } END { print n + 0 }' "$out/${tool}_${t}.kernels")
    verdict="clean"
    if [ "$rc" -eq 124 ]; then
      verdict="TIMED OUT after ${limit}s"
    elif [ -z "$errors" ] && [ -z "$hazards" ]; then
      verdict="NO SANITIZER SUMMARY (exit $rc; see the log)"
    elif { [ "${errors:-0}" -ne 0 ] || [ "${hazards:-0}" -ne 0 ]; } && [ "$ours" -eq 0 ] && [ "$theirs" -gt 0 ] &&
         { [ "$rc" -eq 0 ] || [ "$rc" -eq 86 ]; }; then
      verdict="library only"
    elif [ "${errors:-0}" -ne 0 ] || [ "${hazards:-0}" -ne 0 ]; then
      verdict="FINDINGS"
    elif [ "$rc" -ne 0 ]; then
      verdict="TESTS FAILED (exit $rc)"
    fi
    if [ -z "$cases_line" ] || echo "$cases_line" | grep -qE '^test cases: *0 \|'; then
      cases_line="no CUDA test cases ran"
    fi
    [ "$verdict" = "clean" ] || [ "$verdict" = "library only" ] || status=1
    line=$(printf '%-10s %-11s %-22s errors %-4s hazards %-4s %5ss  %s' "$tool" "$t" "$verdict" \
      "${errors:--}" "${hazards:--}" "$secs" "$cases_line")
    echo "$line" | tee -a "$summary"
    if [ "$ours" -gt 0 ] || [ "$theirs" -gt 0 ]; then
      echo "           reports: $ours in ssmtrain's kernels, $theirs in library kernels; by kernel: $out/${tool}_${t}.kernels" |
        tee -a "$summary"
    fi
  done
done
echo "sanitize_cuda: logs in $out; summary in $summary"
exit "$status"
