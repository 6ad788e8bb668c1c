#!/usr/bin/env bash
# Instruction counts of CUDA kernels, read from their SASS: no GPU needed. For the kernels of
# an object file or executable whose (mangled) name matches a pattern, prints the number of
# instructions, registers and spills, a histogram of the opcodes, and the spacing of a marker
# instruction (by default MUFU.EX2, one per state and step in the scans), which shows how
# many instructions an unrolled step of a loop takes. docs/perf_ssm.md ("How the selective
# scan got here") used it to find the selective-scan backward's overheads.
#
# Usage: tools/sass_stats.sh OBJECT PATTERN [MARKER]
#   OBJECT   a .o, .cubin or executable with sm_XX code, e.g. a CUDA build's
#            CMakeFiles/ssmtrain_ssm.dir/ssm/kernels/selective_scan_cuda.cu.o
#   PATTERN  an extended regex matched against the mangled kernel names, e.g.
#            'scan_backward_kernelINS_4bf16ELi4ELi4ELb0E' (bf16, 4 states, 4 lanes, no seq_idx)
#   MARKER   an opcode whose positions are printed as gaps (default MUFU.EX2)
# Needs cuobjdump (CUDA toolkit; without one: pip download nvidia-cuda-cuobjdump and unpack the
# wheel, then set CUOBJDUMP to its bin/cuobjdump).
set -euo pipefail
obj="${1:?usage: tools/sass_stats.sh OBJECT PATTERN [MARKER]}"
pattern="${2:?usage: tools/sass_stats.sh OBJECT PATTERN [MARKER]}"
marker="${3:-MUFU.EX2}"
cuobjdump="${CUOBJDUMP:-$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)}"
[ -x "$cuobjdump" ] || { echo "sass_stats: cuobjdump not found (set CUOBJDUMP)"; exit 2; }
[ -f "$obj" ] || { echo "sass_stats: no file '$obj'"; exit 2; }

names=$("$cuobjdump" -sass "$obj" | sed -n 's/^[[:space:]]*Function : \(.*\)$/\1/p' | grep -E -- "$pattern" || true)
[ -n "$names" ] || { echo "sass_stats: no kernel of $obj matches '$pattern'"; exit 2; }
usage=$("$cuobjdump" -res-usage "$obj" 2>/dev/null || true)
for f in $names; do
  echo "== $f"
  echo "$usage" | grep -A1 -F "$f" | grep -oE 'REG:[0-9]+|STACK:[0-9]+|SHARED:[0-9]+|LOCAL:[0-9]+' | tr '\n' ' '
  echo
  # One instruction per line: "/*0123*/  OPCODE operands ;"
  "$cuobjdump" -sass -fun "$f" "$obj" | grep -E '^[[:space:]]+/\*[0-9a-f]{4,}\*/' |
    sed -E 's/^[[:space:]]+\/\*[0-9a-f]+\*\/[[:space:]]+//; s/[[:space:]]*\/\*.*//; s/ ;$//' > /tmp/sass_stats.$$
  echo "instructions: $(wc -l < /tmp/sass_stats.$$)"
  awk '{ op = $1; if (op ~ /^@/) op = $2; sub(/\..*/, "", op); n[op]++ }
       END { for (o in n) printf "%6d %s\n", n[o], o }' /tmp/sass_stats.$$ | sort -rn | head -24 | paste - - - - | column -t
  echo "gaps between ${marker} (instructions):"
  grep -nF "$marker" /tmp/sass_stats.$$ | cut -d: -f1 |
    awk 'NR > 1 { printf "%d ", $1 - p } { p = $1 } END { print "" }'
  rm -f /tmp/sass_stats.$$
done
