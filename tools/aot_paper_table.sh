#!/usr/bin/env bash
# Compiles every paper-scale config for the TPU slice its size calls for (tools/aot_compile.py), one JSON
# report per row under docs/aot/, then renders the table in docs/pods.md (tools/aot_table.py).
# ~1 hour on a 2-core CPU host; needs libtpu (the test extra). Rows that do not compile or fit are kept:
# the table says so. Usage: bash tools/aot_paper_table.sh [row-name ...]   (default: all rows)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
ROWS=(
  "hat_paper_1b|configs/hat_paper.py:1b|v5p-128"
  "hat_paper_3b|configs/hat_paper.py:3b|v5p-256"
  "hat_paper_7b|configs/hat_paper.py:7b|v5p-256"
  "tfree_hat_7b|configs/tfree_hat.py:7b|v5p-128"
  "tfree_hat_llama3_8b|configs/tfree_hat.py:llama3_8b|v5p-128"
  "tfree_hat_llama3_70b|configs/tfree_hat.py:llama3_70b|v5p-512"
  "tfree_hat_released_llama3_8b|configs/tfree_hat.py:llama3_8b,variant=released|v5p-128"
  "tfree_hat_released_llama3_70b|configs/tfree_hat.py:llama3_70b,variant=released|v5p-512"
  "block_b4_1.2b|configs/block_transformer.py:b4_1.2b|v5e-64"
  "vanilla_410m|configs/vanilla_lm.py:vanilla_410m|v5e-64"
  "var_d16|configs/var.py:d16|v5p-64"
  "var_d30|configs/var.py:d30|v5p-64"
)
for row in "${ROWS[@]}"; do
  IFS="|" read -r name config topology <<< "$row"
  if [ "$#" -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then continue; fi
  echo "== $name: $config on $topology"
  /usr/bin/time -f "[aot] wall %e s, peak host RSS %M KiB" "$PY" tools/aot_compile.py --config="$config" \
      --topology="$topology" --json="docs/aot/$name.json" 2>&1 | grep -E "^\[aot\]|^ERROR|^program|^train|^decode|does not fit|error:"
done
"$PY" tools/aot_table.py $(for row in "${ROWS[@]}"; do echo "docs/aot/${row%%|*}.json"; done)
