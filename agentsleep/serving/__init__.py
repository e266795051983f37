"""Serving: answer with the current version and hot-swap to a new one without downtime.

    backend.py               the Backend protocol, SwapReport, OpenAI-style errors, Stream
    engine.py                in-process model (Engine: swap/answer/complete + generate/stream)
    transformers_backend.py  Engine behind the OpenAI request shapes
    vllm_backend.py          proxy to a supervised vLLM server (the vllm package below)
    vllm/                    vLLM server processes, routing, swaps, restarts, shared-base lanes
    protocol.py              request validation (chat, completions; use_memory, memory_k)
    server.py                FastAPI app, RegistryWatcher (follows CURRENT), `agentsleep serve`
    homes.py                 `agentsleep serve-homes`: many homes behind one endpoint and one vLLM
    auth.py                  the bearer-token check both endpoints use
    loadtest.py              swaps under continuous load; swap_benchmark() for the bench command
"""
