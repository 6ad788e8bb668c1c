#!/usr/bin/env bash
# Rewrites the generated reference in docs/config.md from the key declarations
# (train/config.h, ssm/model.h, the mixers' options) via `ssmtrain config --docs`.
# Usage: tools/regen_config_docs.sh [path/to/ssmtrain]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-build/ssmtrain}"
ref=$("$bin" config --docs)
python3 - "$ref" <<'PY'
import sys
ref = sys.argv[1]
path = "docs/config.md"
text = open(path).read()
begin, end = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(head + begin + "\n" + ref.rstrip("\n") + "\n" + end + tail)
PY
