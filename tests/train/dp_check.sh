#!/usr/bin/env bash
# Data parallelism on CPU ranks (docs/distributed.md). Usage: dp_check.sh BIN MODE, MODE one of
#   np2     2 ranks: bucketed (overlap) == per-parameter all-reduce, bitwise, also with MoE
#           experts idle on a rank and recomputed blocks; ZeRO-1 == ZeRO-0; bf16 close to f32
#   np4     4 ranks x grad_accum 1 == 1 rank x grad_accum 4; overlap == no overlap; ZeRO-1 == ZeRO-0
#   resume  ZeRO-1 checkpoints resumed across world sizes 4 -> 2 -> 1 == an uninterrupted run
#   hang    a rank that stops or is killed ends the job (exit != 0, a message) within the timeout
#   badopts every dist.* key's bad value exits 2 naming the key
set -euo pipefail
bin="$1"
mode="$2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# Two layers of d_model 16 hold ~6k parameters; dist.bucket_mb=0.002 (500 floats) cuts them
# into a dozen buckets, so the hook starts most of them during the backward.
cat > "$work/tiny.yaml" <<'YAML'
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
optim: {lr: 0.01, grad_clip: 0.5}
schedule: {kind: cosine, warmup_steps: 2, min_lr: 0.001}
budget: {steps: 6}
train: {batch_size: 4, seq_len: 24, log_every: 1, eval_every: 0, eval_batches: 1, threads: 1}
dist: {bucket_mb: 0.002, timeout_s: 60}
YAML
run() {  # run NP DIR overrides...
  local np="$1" dir="$2"
  shift 2
  if [ "$np" = 1 ]; then
    "$bin" train "$work/tiny.yaml" --quiet --run-dir "$work/$dir" "$@"
  else
    mpirun -np "$np" "$bin" train "$work/tiny.yaml" --quiet --run-dir "$work/$dir" "$@"
  fi
}
# "step tokens loss" of the training records (evaluation records carry "split").
losses() { grep -v '"split"' "$work/$1/metrics.jsonl" | sed -E 's/.*"step": ([0-9]+).*"tokens": ([0-9]+).*"loss": ([-0-9.eE+]+).*/\1 \2 \3/'; }
# same A B TOL: the step/token columns equal and |loss A - loss B| <= TOL * loss, over 6 steps.
same() {
  paste <(losses "$1") <(losses "$2") | awk -v tol="$3" -v what="$1 vs $2" '
    { n++; if ($1 != $4 || $2 != $5) { print what ": step/tokens differ: " $0; bad = 1 }
      d = $3 - $6; if (d < 0) d = -d
      if (d > tol * $3) { print what ": loss differs beyond " tol ": " $0; bad = 1 } }
    END { if (n != 6) { print what ": expected 6 records, got " n; bad = 1 } exit bad }'
}
# bitwise A B: the logged losses (printed with 17 digits) are identical.
bitwise() {
  if ! cmp -s <(losses "$1") <(losses "$2"); then
    echo "$1 vs $2: losses are not bitwise equal"; paste <(losses "$1") <(losses "$2"); return 1
  fi
}

case "$mode" in
np2)
  run 2 off dist.overlap=false
  run 2 on
  run 2 on_big dist.bucket_mb=25
  run 2 zero1 dist.zero=1
  run 2 bf16 dist.grad_dtype=bf16
  # Switch-MoE layers of 16 experts over 96 tokens a rank (capacity 6 each): experts that a
  # rank's tokens never reach have no gradient there, so their buckets start only at the
  # end and in another order of completion than on the other rank; with recompute=block
  # every block's parameters are finished inside a nested backward.
  moe="model.moe.every=2 model.moe.experts=16 train.recompute=block"
  run 2 moe_off dist.overlap=false $moe
  run 2 moe_on $moe
  run 2 moe_zero1 dist.zero=1 $moe
  # grad_accum 2: the first micro-batch accumulates locally, only the second communicates.
  run 2 accum_off train.grad_accum=2 dist.overlap=false
  run 2 accum_on train.grad_accum=2
  run 2 accum_zero1 train.grad_accum=2 dist.zero=1 dist.overlap=false
  # Two ranks add a + b whatever MPI's algorithm, and both paths then multiply by 1/2 with
  # the same kernel: bitwise.
  bitwise off on
  bitwise off on_big
  bitwise moe_off moe_on
  same moe_off moe_zero1 1e-6
  bitwise accum_off accum_on
  same accum_off accum_zero1 1e-6
  # ZeRO-1 updates every element as ZeRO-0 does; only the clip's global norm is summed in
  # another grouping (per-shard squares over ranks), a relative change of ~1e-16 in the
  # factor: well inside 1e-6 after 6 steps (f32 losses carry ~1e-7).
  same off zero1 1e-6
  # bf16 gradients carry 8 mantissa bits (relative rounding 4e-3 per element); through the
  # normalised AdamW update that moves the loss by ~1e-4 here, so 2e-3 separates a bf16
  # rounding from a wrong sum (a gradient off by a factor moves it by ~1e-2).
  same off bf16 2e-3
  if cmp -s <(losses off) <(losses bf16); then echo "bf16 communication changed nothing: is it used?"; exit 1; fi
  echo "dp check np2: overlap == no overlap (bitwise), ZeRO-1 == ZeRO-0, bf16 close"
  ;;
np4)
  run 1 accum train.batch_size=1 train.grad_accum=4
  run 4 off train.batch_size=1 dist.overlap=false
  run 4 on train.batch_size=1
  run 4 zero1 train.batch_size=1 dist.zero=1
  # One rank with 4 micro-batches of 1 reads the same 4 sequences as 4 ranks with 1 each;
  # the gradient sums group them differently: f32 rounding (~1e-7 per step), 1e-5 after 6
  # AdamW steps as in the 2-rank check of mpi_check.sh.
  same accum off 1e-5
  same accum on 1e-5
  # Four ranks: MPI may pick another summation tree for a flat bucket than for a single
  # parameter, so overlap and ZeRO-1 agree to rounding (bitwise where it picks the same).
  same off on 1e-6
  same off zero1 1e-6
  echo "dp check np4: 4 ranks x 1 == 1 rank x grad_accum 4; overlap and ZeRO-1 agree"
  ;;
loopback)
  # A world of one under mpirun with SSMTRAIN_DIST_LOOPBACK=1 runs every collective (MPI
  # here; NCCL on a GPU): each is then a copy, the average a multiplication by 1, so the
  # per-parameter and bucketed paths equal a plain run bitwise, and ZeRO-1 to 1e-6 (its
  # clip norm is summed in another grouping, as in np2). DEVICE=cuda runs it on a GPU.
  dev="train.device=${DEVICE:-cpu}"
  run 1 plain "$dev"
  export SSMTRAIN_DIST_LOOPBACK=1
  for what in "off dist.overlap=false" "on" "zero1 dist.zero=1" "bf16 dist.grad_dtype=bf16"; do
    set -- $what
    name="$1"
    shift
    mpirun -np 1 -x SSMTRAIN_DIST_LOOPBACK "$bin" train "$work/tiny.yaml" --quiet --run-dir "$work/lb_$name" "$dev" "$@"
  done
  unset SSMTRAIN_DIST_LOOPBACK
  bitwise plain lb_off
  bitwise plain lb_on
  same plain lb_zero1 1e-6
  # bf16 communication rounds the gradients only when the collectives run: proof that they do.
  if cmp -s <(losses plain) <(losses lb_bf16); then echo "loopback: bf16 gradients changed nothing: no collective ran"; exit 1; fi
  echo "dp check loopback ($dev): per-parameter and bucketed collectives in a world of one == plain (bitwise), ZeRO-1 close"
  ;;
resume)
  # The global batch stays 4 sequences: 4 ranks x 1, then 2 x 2, then 1 x 4.
  run 4 whole train.batch_size=1 dist.zero=1
  run 4 hop train.batch_size=1 dist.zero=1 --max-steps 2
  run 2 hop train.batch_size=2 dist.zero=1 --max-steps 4 --resume auto
  run 1 hop train.batch_size=4 dist.zero=1 --resume auto
  ls "$work/hop/checkpoints" | grep -q ckpt_00000004 || { echo "no checkpoint at step 4"; exit 1; }
  # A resume that lost the optimizer state (fresh moments, bias corrections from step 1)
  # moves the next losses by ~1e-2; the data regrouping alone by ~1e-7.
  same whole hop 1e-5
  echo "dp check resume: ZeRO-1 4 -> 2 -> 1 ranks == uninterrupted 4 ranks"
  ;;
hang)
  # fault SIGNAL MESSAGE: rank 1 gets SIGNAL once the run is logging; the job must exit != 0
  # within 30 s, printing MESSAGE (a regex).
  fault() {
    local signal="$1" message="$2" dir="$work/fault_$1"
    set +e
    mpirun -np 2 "$bin" train "$work/tiny.yaml" --quiet --run-dir "$dir" budget.steps=100000 \
      dist.timeout_s=3 train.checkpoint_every=0 > "$dir.out" 2>&1 &
    local launcher=$! victim="" pid
    for _ in $(seq 1 300); do
      # The ranks are mpirun's children (or grandchildren under a daemon).
      for pid in $(pgrep -P "$launcher" 2>/dev/null; for c in $(pgrep -P "$launcher" 2>/dev/null); do pgrep -P "$c"; done); do
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then victim=$pid; fi
      done
      if [ -n "$victim" ] && [ -s "$dir/metrics.jsonl" ]; then break; fi
      sleep 0.1
    done
    [ -n "$victim" ] || { echo "rank 1 not found"; kill "$launcher"; cat "$dir.out"; exit 1; }
    kill "-$signal" "$victim"
    local hit=$(date +%s)
    # A job still running after 60 s is the failure this mode looks for: end it ourselves.
    for _ in $(seq 1 600); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$launcher" 2>/dev/null; then kill -KILL "$victim" 2>/dev/null; kill "$launcher"; fi
    wait "$launcher"
    local rc=$?
    set -e
    local took=$(( $(date +%s) - hit ))
    [ "$rc" -ne 0 ] || { cat "$dir.out"; echo "SIG$signal: the job exited 0"; exit 1; }
    grep -Eq "$message" "$dir.out" || { cat "$dir.out"; echo "SIG$signal: no message matching '$message'"; exit 1; }
    # 3 s of timeout, the watchdog's 0.1 s tick and mpirun's teardown: well under 30 s.
    [ "$took" -lt 30 ] || { echo "SIG$signal: took $took s to end the job"; exit 1; }
    echo "SIG$signal to rank 1: the job exited $rc after $took s"
  }
  # A stopped rank hangs the others in a collective: only the watchdog can end them.
  fault STOP "rank 0 of 2: .* did not complete within dist.timeout_s = 3 s"
  # A killed rank: mpirun notices and ends the job (or the watchdog does, whichever first).
  fault KILL "signal 9|Killed|dist.timeout_s = 3"
  echo "dp check hang: a stopped or killed rank ends the job with a message"
  ;;
badopts)
  for kv in dist.bucket_mb=0 dist.bucket_mb=-1 dist.grad_dtype=f16 dist.zero=2 dist.zero=-1 dist.timeout_s=0 \
            dist.overlap=maybe; do
    key=${kv%%=*}
    set +e
    out=$("$bin" train "$work/tiny.yaml" --quiet --run-dir "$work/bad" "$kv" 2>&1)
    rc=$?
    set -e
    [ "$rc" -eq 2 ] || { echo "$kv: exit $rc, expected 2: $out"; exit 1; }
    grep -q "$key" <<<"$out" || { echo "$kv: the message does not name $key: $out"; exit 1; }
  done
  set +e
  out=$("$bin" train "$work/tiny.yaml" --quiet --run-dir "$work/bad" dist.zero=1 optim.name=sgd 2>&1)
  rc=$?
  set -e
  [ "$rc" -eq 2 ] && grep -q "dist.zero" <<<"$out" || { echo "dist.zero=1 with sgd: exit $rc: $out"; exit 1; }
  echo "dp check badopts: every bad dist.* value exits 2 naming its key"
  ;;
*)
  echo "unknown mode $mode"; exit 2 ;;
esac
