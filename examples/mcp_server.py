"""Drive `agentsleep mcp` with the official MCP SDK's client, as any MCP host (a desktop app, an agent) does.

    pip install 'agentsleep[mcp]'
    python examples/mcp_server.py                            # a fresh home in a temporary folder
    python examples/mcp_server.py --home ~/.agentsleep/demo --sleep   # also consolidate (minutes on CPU)

The client starts the server as a subprocess and talks to it over stdio:
remember -> recall -> forget, a bad argument (a one-line tool error; nothing
changes), status, and the two resources (the latest sleep report, the version
history). With --sleep it calls sleep_now, which returns at once with a sleep
id, and follows the sleep through status.

To put the server in an MCP host instead, give the host this command:
    agentsleep --home ~/.agentsleep/alice mcp
or, over streamable HTTP (http://127.0.0.1:8765/mcp; serve.api_key as the bearer token when set):
    agentsleep --home ~/.agentsleep/alice mcp --transport http --port 8765
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from mcp import Client, StdioServerParameters


def data(result) -> dict:
    if result.is_error:
        raise SystemExit(f"tool error: {result.content[0].text}")
    return json.loads(result.content[0].text)


async def run(home: Path, sleep: bool) -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "agentsleep.cli", "--home", str(home), "mcp"],
                                   env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    async with Client(server) as c:
        print("tools:", ", ".join(t.name for t in (await c.list_tools()).tools))
        kept = data(await c.call_tool("remember", {"text": "Alice's daughter is called Maya; she is seven.",
                                                   "namespace": "user:alice"}))
        gone = data(await c.call_tool("remember", {"text": "Alice's locker code is 4417.", "namespace": "user:alice"}))
        print("remembered:", kept["id"], gone["id"])
        hits = data(await c.call_tool("recall", {"query": "What is my daughter's name?", "k": 2,
                                                 "namespace": "user:alice"}))["memories"]
        print("recall:", [(h["id"], h["text"]) for h in hits])
        print("forget:", data(await c.call_tool("forget", {"episode_id": gone["id"]}))["forgotten"])
        bad = await c.call_tool("recall", {"query": "Maya", "k": 0})
        print("bad input ->", bad.content[0].text)
        st = data(await c.call_tool("status", {}))
        print(f"status: {st['episodes']} episodes, {st['unconsolidated']} waiting, serving {st['current_version']}")
        history = json.loads((await c.read_resource("agentsleep://history")).contents[0].text)
        print("versions:", [v["version"] for v in history])
        if sleep:
            sid = data(await c.call_tool("sleep_now", {}))["sleep_id"]
            print("sleep started:", sid)
            while (s := data(await c.call_tool("status", {"sleep_id": sid})))["state"] != "done":
                print("  ...", s.get("stage") or "starting")
                await asyncio.sleep(5)
            print("sleep:", s["result"]["status"], s["result"].get("version"))
        report = json.loads((await c.read_resource("agentsleep://sleeps/latest")).contents[0].text)
        print("latest sleep report:", report.get("sleep_id") or report.get("note"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=None, help="agent home (default: a temporary folder)")
    ap.add_argument("--sleep", action="store_true", help="also run a sleep through sleep_now (minutes on CPU)")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="agentsleep-mcp-")) / "home"
    asyncio.run(run(home.expanduser(), args.sleep))


if __name__ == "__main__":
    main()
