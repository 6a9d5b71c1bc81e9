#!/usr/bin/env bash
# Keeps the asv suite honest without timing anything (about a minute):
#   1. `asv check`: every benchmark module imports and every benchmark is well-formed;
#   2. a smoke run of a few small benchmarks, once each, against the installed package
#      (nothing is saved: an existing environment saves only with --set-commit-hash).
# Needs asv and the package installed in the current Python (pip install -e '.[bench]').
set -euo pipefail

cd "$(dirname "$0")/../asv_bench"
ASV=(python -m asv)

# First use on a machine asks questions; --yes takes the detected defaults.
"${ASV[@]}" machine --yes > /dev/null

echo "asv check"
"${ASV[@]}" check --python=same

# One small shape on cpu: an nbdl op and its PyTorch twin (n/a without torch),
# forward and forward+backward. asv exits non-zero when one of them fails.
SMOKE='^elementwise\.(Torch)?(Add|Sum)\.time_(add|sum)_forward(_backward)?\('"'"'cpu'"'"', \(256, 1024\)\)$'
echo "asv smoke run"
"${ASV[@]}" run --python=same --quick --show-stderr --bench "$SMOKE"
