#!/usr/bin/env python3
"""`ssmtrain prepare --tokenizer` against Hugging Face's tokenizers package: identical ids.

    tools/tokenizer_check.py build/ssmtrain [--workdir DIR] [--vocab 8192] [--docs 2000]

Trains a byte-level BPE tokenizer.json with the tokenizers package on the GCIDE dictionary
(/usr/share/dictd/gcide.dict.dz, Debian's dict-gcide; any text file with --text), then
writes documents as files and prepares them with ssmtrain, and checks that the shards hold,
for every document, <|endoftext|> followed by exactly the ids of `Tokenizer.encode`:

  - the dictionary cut into --docs documents, and the whole dictionary as one document
    (which ssmtrain cuts into pieces encoded in parallel);
  - documents of random characters drawn from every class the GPT-2 split tells apart
    (letters, numbers, whitespace and other characters of many scripts, contractions,
    "<|endoftext|>" written literally), which exercise the Unicode tables;
  - the same tokenizer with add_prefix_space, ignore_merges, and added tokens with lstrip,
    rstrip and normalized set; and with an NFC normalizer (GPT-NeoX's) on text in NFC;
  - a tokenizer.json of another model type is refused with exit 2, naming the file.

It prints encode speeds of both. Exit codes: 0 passed, 1 a check failed, 77 tokenizers is
not installed or there is no text.
"""
import argparse
import gzip
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import unicodedata

try:
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError as e:
    print(f"tokenizer_check: skipped: {e}")
    sys.exit(77)

failures = []


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def read_shards(directory):
    ids = []
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("train_") and name.endswith(".bin")):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        header = struct.unpack("<256i", data[:1024])
        width = 2 if header[0] == 20240520 else 4
        count = header[2]
        ids.extend(struct.unpack(f"<{count}{'H' if width == 2 else 'I'}", data[1024:1024 + count * width]))
        last_header = header
    return ids, last_header


def prepare(ssmtrain, tokenizer_path, files, out, threads_env=None):
    cmd = [ssmtrain, "prepare", "--tokenizer", tokenizer_path, "--output", out, "--val-fraction", "0",
           "--shard-tokens", "50000000", "--input", *files]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        print(r.stdout, r.stderr)
    return r, seconds


def compare(name, ssmtrain, tok, tok_path, docs, workdir):
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    files = []
    for i, text in enumerate(docs):
        path = os.path.join(d, f"doc_{i:05d}.txt")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        files.append(path)
    r, seconds = prepare(ssmtrain, tok_path, files, os.path.join(d, "shards"))
    if r.returncode != 0:
        check(False, f"{name}: prepare exited {r.returncode}")
        return
    got, header = read_shards(os.path.join(d, "shards"))
    eot = tok.token_to_id("<|endoftext|>")
    start = time.perf_counter()
    encoded = tok.encode_batch(docs, add_special_tokens=False)
    py_seconds = time.perf_counter() - start
    want = []
    for e in encoded:
        want.append(eot)
        want.extend(e.ids)
    mb = sum(len(t.encode("utf-8")) for t in docs) / 1e6
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        print(f"  first difference at token {at}: ssmtrain {got[at:at + 8]} tokenizers {want[at:at + 8]}")
        print(f"  tokens: {[tok.id_to_token(i) for i in want[max(0, at - 4):at + 8]]}")
    check(got == want, f"{name}: {len(docs)} documents, {mb:.1f} MB, {len(want)} tokens identical "
                       f"(ssmtrain prepare {mb / seconds:.1f} MB/s end to end, tokenizers encode_batch "
                       f"{mb / py_seconds:.1f} MB/s)")
    check(header[3] == tok.get_vocab_size(with_added_tokens=True) and header[5] == eot + 1,
          f"{name}: shard header records vocabulary {header[3]} and end-of-text {header[5] - 1}")


# Characters of every class the split tells apart, from many scripts.
POOL = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") +
        list(".,;:!?-()[]{}\"'`~@#$%^&*_+=/\\|<>") +
        [" "] * 12 + ["\n"] * 4 + ["\t", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2003",
                                   "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\u180e", "\u200b"] +
        list("éüßøÆœŁ") + list("αβγΩ") + list("жЯё") + list("中文字") + list("한국") + list("عربي") +
        list("हिन्दी") + list("٣٤५६") + list("²³¼Ⅻⅷ") + list("ˈˌʰ") + list("\u0301\u0308") +
        list("😀🚀👍🏽") + list("—–…€£©®™") + ["\ufffd", "\U0001d400", "\U00010400"] +
        # Assigned in Unicode 15.0-16.0: Kawi letter and digit, a Kannada mark, CJK Ext. I,
        # Garay capital and digit, Kirat Rai, Tulu-Tigalari, outlined digit; unassigned.
        ["\U00011f04", "\U00011f50", "\u0cf3", "\U0002ebf0", "\U00010d50", "\U00010d40", "\U00016d43",
         "\U00011380", "\U0001ccf0", "\U000e0080"])
WORDS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "don't", "we'll", "<|endoftext|>", "  ", "   x",
         "\n\n", " \n", "hello", " world", "12345", " 3.14"]


def random_document(rng, n):
    parts = []
    for _ in range(n):
        parts.append(rng.choice(WORDS) if rng.random() < 0.15 else rng.choice(POOL))
    return "".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ssmtrain")
    ap.add_argument("--workdir")
    ap.add_argument("--text", default="/usr/share/dictd/gcide.dict.dz")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--docs", type=int, default=2000)
    args = ap.parse_args()
    ssmtrain = os.path.abspath(args.ssmtrain)
    if not os.path.exists(args.text):
        print(f"tokenizer_check: skipped: no text at {args.text} (apt install dict-gcide)")
        sys.exit(77)
    workdir = args.workdir or tempfile.mkdtemp(prefix="tokenizer_check_")
    os.makedirs(workdir, exist_ok=True)
    print(f"tokenizers {tokenizers.__version__}, work directory {workdir}")

    opener = gzip.open if args.text.endswith((".gz", ".dz")) else open
    with opener(args.text, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    print(f"text: {args.text}, {len(text.encode('utf-8')) / 1e6:.1f} MB")

    # The tokenizer: GPT-2's pipeline, trained here on the dictionary.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    start = time.perf_counter()
    tok.train_from_iterator((text[i:i + 100000] for i in range(0, len(text), 100000)), trainer=trainer)
    tok_path = os.path.join(workdir, "tokenizer.json")
    tok.save(tok_path)
    print(f"trained {tok.get_vocab_size()} tokens in {time.perf_counter() - start:.1f} s: {tok_path}")

    # The dictionary in documents of about equal size, cut at blank lines.
    docs, size = [], max(1, len(text) // args.docs)
    start = 0
    while start < len(text):
        end = text.find("\n\n", start + size)
        end = len(text) if end < 0 else end + 1
        docs.append(text[start:end])
        start = end
    compare("gcide_documents", ssmtrain, tok, tok_path, docs, workdir)
    compare("gcide_whole", ssmtrain, tok, tok_path, [text], workdir)

    rng = random.Random(15)
    random_docs = [random_document(rng, rng.randint(0, 3000)) for _ in range(300)]
    compare("random_characters", ssmtrain, tok, tok_path, random_docs, workdir)

    # Options: prefix space, ignore_merges, added tokens with strip and normalized flags.
    spec = json.loads(tok.to_str())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    spec["model"]["ignore_merges"] = True
    next_id = tok.get_vocab_size()
    for content, lstrip, rstrip, normalized, special in [("[SEP]", True, False, False, True),
                                                         ("<mask>", False, True, True, False),
                                                         ("ab", False, False, True, False),
                                                         ("    ", False, False, True, False)]:
        spec["added_tokens"].append({"id": next_id, "content": content, "single_word": False, "lstrip": lstrip,
                                     "rstrip": rstrip, "normalized": normalized, "special": special})
        next_id += 1
    variant_path = os.path.join(workdir, "tokenizer_variant.json")
    with open(variant_path, "w") as f:
        json.dump(spec, f)
    variant = Tokenizer.from_file(variant_path)
    variant_docs = [d.replace("  ", " [SEP] ", 3).replace("the", "<mask>  the", 2) for d in docs[:300]]
    variant_docs += [random_document(rng, 2000) + " [SEP]\t<mask>\n x" for _ in range(50)]
    compare("variant_options", ssmtrain, variant, variant_path, variant_docs, workdir)

    # GPT-NeoX's normalizer, NFC, is accepted but not applied (docs/data.md): on text that is
    # NFC already the ids are the package's, which does apply it.
    nfc_docs = [d for d in docs[:300] if unicodedata.is_normalized("NFC", d)]
    spec = json.loads(tok.to_str())
    spec["normalizer"] = {"type": "NFC"}
    nfc_path = os.path.join(workdir, "tokenizer_nfc.json")
    with open(nfc_path, "w") as f:
        json.dump(spec, f)
    compare("nfc_normalizer", ssmtrain, Tokenizer.from_file(nfc_path), nfc_path, nfc_docs, workdir)

    # A tokenizer of another kind is refused with exit 2 and the file's name.
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    bad_path = os.path.join(workdir, "wordpiece.json")
    wordpiece.save(bad_path)
    r, _ = prepare(ssmtrain, bad_path, [os.path.join(workdir, "gcide_whole", "doc_00000.txt")],
                   os.path.join(workdir, "bad"))
    check(r.returncode == 2 and bad_path in r.stderr and "WordPiece" in r.stderr,
          f"a WordPiece tokenizer.json: exit {r.returncode}, {r.stderr.strip()[:120]}")

    print("tokenizer_check: " + ("passed" if not failures else f"{len(failures)} check(s) failed"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
