#!/usr/bin/env bash
# MoE-Mamba against Mamba at matched active parameters on real text (docs/demos.md): the
# dense configs/mamba_text.yaml and configs/moe_mamba_text.yaml with 8 experts and with 32
# (expert width 839, so one expert plus the router still weighs one Mamba block: 3,569,920
# active parameters in every run), trained on the same token stream of the byte-level
# Debian corpus (tools/prepare_corpus.sh) for the same steps. Prints each run's final
# validation loss and the step at which each MoE run first reaches the dense run's final
# validation loss (linear between evaluations), the speed-up in steps the MoE-Mamba paper
# reports (2.35x for its setting), and draws OUTDIR/comparison.svg.
#
# Usage: tools/moe_comparison.sh SSMTRAIN OUTDIR [key.path=value ...]
#   key.path=value  passed to every run (e.g. budget.steps=4000, train.device=cpu)
# Environment: PARALLEL=1 trains the three runs at once (on one GPU start CUDA MPS first,
# as tools/gpu_demos.sh does); by default they run one after another. D_FF8 and D_FF32 (851
# and 839) are the expert widths that match a Mamba mixer at d_model 256; at another width
# pass model.d_model=D and the widths (2 D d_ff + D E = the mixer's parameters), e.g. at
# d_model 512 (13.7M active): D_FF8=1651 D_FF32=1639.
set -euo pipefail
die() { echo "moe_comparison: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: tools/moe_comparison.sh SSMTRAIN OUTDIR [key.path=value ...]"
bin="$1"
out="$2"
shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$out/corpus/shards/train_000000.bin" ] || "$here/tools/prepare_corpus.sh" "$bin" "$out/corpus"
common=(data.kind=shards "data.path=$out/corpus/shards" train.eval_every=200 train.sample_tokens=0 "$@")

run() {  # run NAME CONFIG overrides...
  local name="$1" config="$2"
  shift 2
  "$bin" train "$here/configs/$config" --run-dir "$out/$name" --resume auto --quiet "${common[@]}" "$@"
}
d_ff8="${D_FF8:-851}"
d_ff32="${D_FF32:-839}"
launch() {  # launch NAME CONFIG overrides...: in the background with PARALLEL=1
  if [ "${PARALLEL:-0}" = 1 ]; then run "$@" > "$out/$1.out" 2>&1 & else run "$@"; fi
}
launch dense mamba_text.yaml
launch moe8 moe_mamba_text.yaml model.moe.d_ff="$d_ff8"
launch moe32 moe_mamba_text.yaml model.moe.experts=32 model.moe.d_ff="$d_ff32"
for job in $(jobs -p); do wait "$job" || die "a run failed (its train.log and $out/*.out say why)"; done

# "step loss" of a run's validation records.
val() { grep '"split": "val"' "$out/$1/metrics.jsonl" | sed -E 's/.*"step": ([0-9]+).*"loss": ([-0-9.eE+]+).*/\1 \2/'; }
target=$(val dense | tail -1 | cut -d' ' -f2)
dense_steps=$(val dense | tail -1 | cut -d' ' -f1)
printf '%-8s %12s %14s %22s %10s\n' run "final step" "final val loss" "reaches dense final at" "speed-up"
for r in dense moe8 moe32; do
  last=$(val "$r" | tail -1)
  reach=$(val "$r" | awk -v t="$target" '
    NR > 1 && $2 <= t && ps != "" { s = ps + (pl - t) / (pl - $2) * ($1 - ps); printf "%.0f", s; found = 1; exit }
    NR == 1 && $2 <= t { printf "%d", $1; found = 1; exit }
    { ps = $1; pl = $2 }
    END { if (!found) printf "-" }')
  speed="-"
  [ "$reach" != "-" ] && speed=$(awk -v a="$dense_steps" -v b="$reach" 'BEGIN { printf "%.2fx", a / b }')
  printf '%-8s %12s %14.4f %22s %10s\n' "$r" "${last%% *}" "${last##* }" "$reach" "$speed"
done
"$bin" plot "$out/dense" "$out/moe8" "$out/moe32" --out "$out/comparison.svg"
echo "moe_comparison: curves in $out/comparison.svg"
