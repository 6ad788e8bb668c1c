#!/usr/bin/env bash
# A real-text corpus from Debian packages, large enough not to be memorised by the models of a
# scaling sweep or the MoE comparison (docs/data.md, "A corpus from Debian packages"): the Linux
# kernel source tree (package linux-source: about 1.1 GB of C, headers, scripts and
# documentation) and the GCIDE dictionary (package dict-gcide: about 40 MB of English),
# tokenized into llm.c shards with a train/val split, one document per file.
#
# Usage: tools/prepare_corpus.sh SSMTRAIN OUTDIR [--tokenizer FILE.json | --train-tokenizer VOCAB] [--sample-mb MB]
#   SSMTRAIN            the ssmtrain binary
#   OUTDIR              receives text/ (the extracted files), inputs.txt (the document list),
#                       shards/ (train_*.bin, val_*.bin) and, with --train-tokenizer, tokenizer.json
#   --tokenizer FILE    encode with this byte-level BPE tokenizer.json (GPT-2, GPT-NeoX)
#   --train-tokenizer V train a byte-level BPE tokenizer of V tokens on a 100 MB sample of the
#                       corpus with the `tokenizers` Python package (PYTHON, default python3)
#   neither             bytes as tokens (vocab 256), documents separated by the byte 0
#   --sample-mb MB      keep a random sample of the documents (fixed seed, so the same sample
#                       every time) of about MB megabytes instead of the whole corpus: a corpus
#                       whose every part has the whole corpus's mix, small enough to copy
# Environment: PYTHON (for --train-tokenizer), SAMPLE_MB (tokenizer training sample, default 100).
# Installs linux-source and dict-gcide with apt-get when they are missing (as root).
set -euo pipefail

die() { echo "prepare_corpus: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: tools/prepare_corpus.sh SSMTRAIN OUTDIR [--tokenizer FILE.json | --train-tokenizer VOCAB] [--sample-mb MB]"
bin="$1"
out="$2"
shift 2
tokenizer=""
train_vocab=""
sample_mb=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tokenizer) tokenizer="${2:?--tokenizer needs a file}"; shift 2 ;;
    --train-tokenizer) train_vocab="${2:?--train-tokenizer needs a vocabulary size}"; shift 2 ;;
    --sample-mb) sample_mb="${2:?--sample-mb needs a size in MB}"; shift 2 ;;
    *) die "unknown option '$1'" ;;
  esac
done
[ -x "$bin" ] || die "'$bin' is not an executable ssmtrain"
[ -z "$tokenizer" ] || [ -f "$tokenizer" ] || die "--tokenizer: no file '$tokenizer'"
[ -z "$tokenizer" ] || [ -z "$train_vocab" ] || die "--tokenizer and --train-tokenizer exclude each other"
[ -z "$sample_mb" ] || [[ "$sample_mb" =~ ^[1-9][0-9]*$ ]] || die "--sample-mb: '$sample_mb' is not a whole number of MB"

# The packages.
missing=""
ls /usr/src/linux-source-*.tar.xz > /dev/null 2>&1 || missing="$missing linux-source"
[ -f /usr/share/dictd/gcide.dict.dz ] || missing="$missing dict-gcide"
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || die "install$missing first (sudo apt-get install$missing)"
  echo "prepare_corpus: installing$missing"
  apt-get install -y -q $missing > /dev/null
fi
tarball=$(ls /usr/src/linux-source-*.tar.xz | sort -V | tail -1)

# The text: the kernel tree's source and documentation files (not its binaries, firmware
# blobs or images), extracted once.
mkdir -p "$out/text"
if [ ! -f "$out/text/.done" ]; then
  echo "prepare_corpus: extracting the text files of $tarball"
  tar -xJf "$tarball" -C "$out/text" --wildcards --no-anchored \
    '*.c' '*.h' '*.S' '*.rst' '*.txt' '*.py' '*.sh' '*.pl' '*.awk' '*.y' '*.l' '*.dts' '*.dtsi' \
    '*Kconfig*' '*Makefile*' '*README*'
  touch "$out/text/.done"
fi
# One document per file, in path order; the dictionary last.
find "$out/text" -type f -size +0 ! -name .done | LC_ALL=C sort > "$out/inputs.txt"
echo /usr/share/dictd/gcide.dict.dz >> "$out/inputs.txt"
if [ -n "$sample_mb" ]; then
  # Documents in a seeded random order, kept until the sample holds MB megabytes.
  seed() { openssl enc -aes-256-ctr -pass pass:ssmtrain-corpus -nosalt < /dev/zero 2> /dev/null; }
  shuf --random-source=<(seed) "$out/inputs.txt" | tr '\n' '\0' | xargs -0 stat -c '%s %n' |
    awk -v max=$((sample_mb * 1000000)) 'total < max { line = $0; sub(/^[0-9]+ /, "", line); total += $1; print line }' \
    > "$out/inputs.sample"
  mv "$out/inputs.sample" "$out/inputs.txt"
fi
files=$(wc -l < "$out/inputs.txt")
bytes=$(du -cb --files0-from=<(tr '\n' '\0' < "$out/inputs.txt") | tail -1 | cut -f1)
echo "prepare_corpus: $files documents, $((bytes / 1000000)) MB (the dictionary compressed)"

# The tokenizer.
if [ -n "$train_vocab" ]; then
  tokenizer="$out/tokenizer.json"
  "${PYTHON:-python3}" - "$out/inputs.txt" "$tokenizer" "$train_vocab" "${SAMPLE_MB:-100}" <<'PY'
import gzip, random, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
inputs, path, vocab, sample_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = [l.strip() for l in open(inputs) if l.strip()]
random.Random(0).shuffle(files)
def texts():
    left = sample_mb * 1_000_000
    for f in files:
        raw = gzip.open(f).read() if f.endswith((".gz", ".dz")) else open(f, "rb").read()
        left -= len(raw)
        yield raw.decode("utf-8", errors="replace")
        if left <= 0:
            return
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(texts(), trainer)
tok.save(path)
print(f"prepare_corpus: trained a byte-level BPE tokenizer of {tok.get_vocab_size()} tokens -> {path}")
PY
fi

# The shards.
if [ -n "$tokenizer" ]; then
  "$bin" prepare --input "@$out/inputs.txt" --output "$out/shards" --tokenizer "$tokenizer" --val-fraction 0.005
else
  "$bin" prepare --input "@$out/inputs.txt" --output "$out/shards" --eot 0 --val-fraction 0.005
fi
echo "prepare_corpus: train with data.kind: shards, data.path: $out/shards (docs/data.md)"
