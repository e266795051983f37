"""vLLM serving: run vLLM OpenAI servers, route requests to them, hot-swap versions, restart them.

    weights.py     where a version's weights are, their shape signature, KV-cache sizing
    lora.py        a version's sleep adapters since some weights, composed into one LoRA
    process.py     one vLLM server process (VLLMProcess, start_ready), loopback only
    routing.py     Server, Route, and the Gate every request passes to lease a route
    restarts.py    the restart policy (deaths counted in a time window), the monitor thread, the steps
    supervisor.py  one home's server (VLLMSupervisor): plan() picks a SwapKind, swap() does it
    lanes.py       many homes on one shared-base server, a LoRA lane per home (SharedBaseVLLM)

Nothing here imports vLLM itself: the servers run it in their own processes. The worker
extension those servers load (staged weight reloads) is ``agentsleep.adapters.vllm_reload``,
because vLLM imports it by name inside its workers.
"""
from .lanes import LANE_NAME, HomeLane, SharedBaseVLLM
from .process import SERVED_NAME, VLLMProcess, VLLMStartError, start_ready, vllm_available
from .routing import Route, Server
from .supervisor import SwapKind, VLLMSupervisor

__all__ = ["LANE_NAME", "SERVED_NAME", "HomeLane", "Route", "Server", "SharedBaseVLLM", "SwapKind",
           "VLLMProcess", "VLLMStartError", "VLLMSupervisor", "start_ready", "vllm_available"]
