#!/usr/bin/env bash
# The reference scaling sweep of docs/scaling.md: Mamba, Mamba-2 and Transformer++
# (configs/scaling/*.yaml) at five widths each on the byte-level Debian corpus, then the
# per-family fits, bootstrap intervals and pictures that `ssmtrain sweep` writes.
#
# Usage: tools/reference_sweep.sh SSMTRAIN OUTDIR [chinchilla|isoflop] [--jobs N] [key.path=value ...]
#   chinchilla (default)  every width at its Chinchilla budget, D = 20 N
#   isoflop               every width at each of three compute budgets (budget.flops), for the
#                         IsoFLOP profiles
#   key.path=value        passed to every run (e.g. train.device=cpu for a trial)
#   --jobs N              train N runs at once (see docs/scaling.md; start CUDA MPS first)
# The corpus (OUTDIR/corpus, tools/prepare_corpus.sh, bytes as tokens) is built once.
set -euo pipefail
die() { echo "reference_sweep: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: tools/reference_sweep.sh SSMTRAIN OUTDIR [chinchilla|isoflop] [--jobs N] [key.path=value ...]"
bin="$1"
out="$2"
shift 2
mode=chinchilla
if [ $# -gt 0 ] && [ "${1#*=}" = "$1" ] && [ "${1#--}" = "$1" ]; then
  mode="$1"
  shift
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$out/corpus/shards/train_000000.bin" ] || "$here/tools/prepare_corpus.sh" "$bin" "$out/corpus"
widths="model.d_model=64,128,192,256,320"
case "$mode" in
  chinchilla) grid="$widths" ;;
  isoflop) grid="budget.flops=3e14,1e14,3e13;$widths" ;;  # the longest runs first (--jobs)
  *) die "unknown mode '$mode' (chinchilla or isoflop)" ;;
esac
"$bin" sweep "$here/configs/scaling/mamba.yaml" "$here/configs/scaling/mamba2.yaml" \
  "$here/configs/scaling/transformer.yaml" --grid "$grid" --run-dir "$out/$mode" \
  data.path="$out/corpus/shards" "$@"
