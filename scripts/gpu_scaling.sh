#!/usr/bin/env bash
# GPU rows for the bench:scaling-gpu block of docs/BENCHMARKS.md: peak seed memory with and without
# gradient checkpointing at 7-8B (random weights of the published shapes), in one short run.
#
# On a GPU machine with no agentsleep install and no network (run from the repository root; .gpu/ holds the
# wheels of what that machine lacks, pydantic and rapidfuzz with their needs, and the embedded SmolLM2
# tokenizer, so nothing is downloaded):
#     OUT=/some/dir bash scripts/gpu_scaling.sh
# then, here:
#     python -m agentsleep.bench.scaling_suite --from-json docs/results/scaling-gpu.json,OUT/scaling-gpu-3.json,... \
#         --docs docs/BENCHMARKS.md
# Check the command on a CPU first (minutes, not a measurement):
#     DEVICE=cpu MODELS=smollm2-135m EXTRA_MODELS=smollm2-135m EPISODES=1 PY=.venv/bin/python \
#         AGENTSLEEP_SLEEP__SEED__MIN_STEPS=2 AGENTSLEEP_SLEEP__SEED__EPOCHS=1 OUT=/tmp/gpu-check BUDGET=300 \
#         bash scripts/gpu_scaling.sh
set -uo pipefail
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-llama-3.1-8b,qwen2.5-7b}   # batch 8, checkpointing on then off, one row each
EPISODES=${EPISODES:-20}
EXTRA_MODELS=${EXTRA_MODELS:-llama-3.1-8b}  # then batch 32 with checkpointing, if time is left
BUDGET=${BUDGET:-450}                       # seconds for the whole script; rows are written as they finish
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ! $PY -c "import pydantic, rapidfuzz" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
TOK=()
[ -d .gpu/tok ] && TOK=(--tokenizer .gpu/tok)
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)" || exit 1

# Main rows: each model x checkpointing on, off at batch 8 (one dream stage per model).
timeout $((BUDGET - 30 - SECONDS)) $PY -m agentsleep.bench.scaling_suite --device "$DEVICE" "${TOK[@]}" \
  --models "$MODELS" --episodes "$EPISODES" --batch-size 8 --gradient-checkpointing on,off \
  --out "$OUT/scaling-gpu-3.json" 2>&1 | tee "$OUT/log3"
echo "main rows done at ${SECONDS}s (rc ${PIPESTATUS[0]})"

# Extra rows while time is left: batch 32 with checkpointing (the batch SCALING.md suggests for a GPU).
if (( BUDGET - SECONDS > 120 )); then
  timeout $((BUDGET - 5 - SECONDS)) $PY -m agentsleep.bench.scaling_suite --device "$DEVICE" "${TOK[@]}" \
    --models "$EXTRA_MODELS" --episodes "$EPISODES" --batch-size 32 --gradient-checkpointing on \
    --out "$OUT/scaling-gpu-4.json" 2>&1 | tee "$OUT/log4"
  echo "extra rows done at ${SECONDS}s (rc ${PIPESTATUS[0]})"
else
  echo "no time left for the extra rows (${SECONDS}s of ${BUDGET}s)"
fi
