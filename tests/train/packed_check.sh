#!/usr/bin/env bash
# `ssmtrain train` with packed documents on a text file: data.pack_documents=true with
# data.eot_token=10 (a newline begins each document) must train, evaluate and finish with
# finite losses; without data.eot_token, and with a layer that cannot restart its state, the
# command must exit 2 naming the key.
# Usage: tests/train/packed_check.sh path/to/ssmtrain
set -uo pipefail
bin="${1:?usage: packed_check.sh path/to/ssmtrain}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 300); do echo "line $i of a small text, with a few words on it $((i * 7919 % 1000))"; done > "$dir/lines.txt"
cat > "$dir/tiny.yaml" <<YAML
model: {mixer: mamba2, d_model: 16, n_layer: 2, d_state: 8, headdim: 8, chunk_size: 16, vocab_size: 256}
data: {kind: text, path: $dir/lines.txt, val_fraction: 0.1}
budget: {steps: 6}
train: {batch_size: 2, seq_len: 64, grad_accum: 2, log_every: 1, eval_every: 3, eval_batches: 2, sample_tokens: 8}
YAML
fail() { echo "packed check: $*"; exit 1; }

"$bin" train "$dir/tiny.yaml" --quiet --run-dir "$dir/run" data.pack_documents=true data.eot_token=10 2> "$dir/stderr"
rc=$?
[ "$rc" -eq 0 ] || { cat "$dir/stderr"; fail "ssmtrain exited $rc with data.pack_documents=true"; }
grep -q "done: 6 steps" "$dir/run/train.log" || fail "train.log lacks the end of the run"
grep -q "pack_documents: true" "$dir/run/config.yaml" || fail "config.yaml does not record data.pack_documents"
n=$(grep -c '"loss"' "$dir/run/metrics.jsonl")
[ "$n" -eq 8 ] || fail "expected 6 training and 2 evaluation records, found $n"
if grep -Eiq '"loss": ?(nan|-?inf)' "$dir/run/metrics.jsonl"; then fail "a loss is not finite"; fi

"$bin" train "$dir/tiny.yaml" --quiet --run-dir "$dir/no_eot" data.pack_documents=true 2> "$dir/stderr"
rc=$?
[ "$rc" -eq 2 ] || fail "without data.eot_token: exit $rc, expected 2"
grep -q "data.eot_token" "$dir/stderr" || { cat "$dir/stderr"; fail "the message does not name data.eot_token"; }

"$bin" train "$dir/tiny.yaml" --quiet --run-dir "$dir/s4d" data.pack_documents=true data.eot_token=10 \
  model.layers=[mamba2,s4d] 2> "$dir/stderr"
rc=$?
[ "$rc" -eq 2 ] || fail "with an s4d layer: exit $rc, expected 2"
grep -q "data.pack_documents" "$dir/stderr" || { cat "$dir/stderr"; fail "the message does not name data.pack_documents"; }
echo "packed check: trained with packed documents (finite losses); missing data.eot_token and an s4d layer exit 2"
