#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite, offline.
#   scripts/test.sh                 everything (unit, integration with SmolLM2 + Chroma server, vLLM)
#   scripts/test.sh -m "not integration"   the fast unit tests only
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q tests "$@"
