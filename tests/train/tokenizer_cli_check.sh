#!/usr/bin/env bash
# A BPE tokenizer through the CLI: `prepare --tokenizer` writes shards whose headers record
# the tokenizer's vocabulary and <|endoftext|>; a model trains on them with data.eot_token
# left at -1 (resolved from the headers) and packed documents; `sample --tokenizer` prints
# the prompt followed by decoded text; a bad tokenizer.json exits 2 naming the file.
# Usage: tests/train/tokenizer_cli_check.sh path/to/ssmtrain
set -uo pipefail
bin="${1:?usage: tokenizer_cli_check.sh path/to/ssmtrain}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "tokenizer CLI check: $*"; exit 1; }

# The hand-written tokenizer of tests/data/test_tokenizer.cpp (ids 0..19).
cat > "$dir/tokenizer.json" <<'JSON'
{"added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true, "normalized": false}],
 "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
 "decoder": {"type": "ByteLevel"},
 "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "h": 1, "e": 2, "l": 3, "o": 4, "w": 5, "r": 6, "d": 7,
           "Ġ": 8, "Ċ": 9, "'": 10, "s": 11, "!": 12, "ll": 13, "he": 14, "hell": 15, "hello": 16, "Ġw": 17,
           "or": 18, "Ġwor": 19},
           "merges": ["l l", "h e", "he ll", "hell o", "Ġ w", "o r", "Ġw or"]}}
JSON
for f in a b c; do
  for i in $(seq 1 200); do echo "hello world! he'll sell old words"; done > "$dir/$f.txt"
done
"$bin" prepare --tokenizer "$dir/tokenizer.json" --input "$dir/a.txt" "$dir/b.txt" "$dir/c.txt" \
  --output "$dir/shards" --val-fraction 0.1 > "$dir/prepare.out" 2>&1 || { cat "$dir/prepare.out"; fail "prepare failed"; }
grep -q "vocabulary 20" "$dir/prepare.out" || { cat "$dir/prepare.out"; fail "prepare does not report the vocabulary"; }
grep -q "preceded by token 0" "$dir/prepare.out" || fail "prepare does not report <|endoftext|> as the separator"

cat > "$dir/tiny.yaml" <<YAML
model: {mixer: mamba, d_model: 16, n_layer: 1, d_state: 4, vocab_size: 24}
data: {kind: shards, path: $dir/shards, pack_documents: true}
budget: {steps: 4}
train: {batch_size: 2, seq_len: 32, log_every: 1, eval_every: 4, eval_batches: 1, sample_tokens: 0}
YAML
"$bin" train "$dir/tiny.yaml" --quiet --run-dir "$dir/run" 2> "$dir/stderr" || { cat "$dir/stderr"; fail "train failed"; }
ckpt=$(ls "$dir"/run/checkpoints/*.h5 | tail -1)
"$bin" sample "$ckpt" --tokenizer "$dir/tokenizer.json" --prompt "hello" --tokens 20 --seed 1 > "$dir/sample.out" 2>&1 ||
  { cat "$dir/sample.out"; fail "sample --tokenizer failed"; }
head -c 5 "$dir/sample.out" | grep -q "^hello$" || { cat "$dir/sample.out"; fail "the sample does not start with the prompt"; }
[ "$(wc -c < "$dir/sample.out")" -gt 8 ] || { cat "$dir/sample.out"; fail "the sample decoded to almost nothing"; }
"$bin" sample "$ckpt" --tokenizer "$dir/tokenizer.json" --tokens 5 > /dev/null 2>&1 || fail "sample from <|endoftext|> failed"

echo '{"model": {"type": "Unigram"}, "pre_tokenizer": null}' > "$dir/bad.json"
"$bin" prepare --tokenizer "$dir/bad.json" --input "$dir/a.txt" --output "$dir/bad" 2> "$dir/stderr"
rc=$?
[ "$rc" -eq 2 ] || fail "a Unigram tokenizer.json: exit $rc, expected 2"
grep -q "$dir/bad.json" "$dir/stderr" || { cat "$dir/stderr"; fail "the message does not name the file"; }
"$bin" sample "$ckpt" --tokenizer "$dir/missing.json" 2> "$dir/stderr"
rc=$?
[ "$rc" -eq 2 ] && grep -q "missing.json" "$dir/stderr" || { cat "$dir/stderr"; fail "a missing tokenizer: exit $rc"; }
echo "tokenizer CLI check: prepare, train (eot from the headers, packed), sample with text in and out; bad files exit 2"
