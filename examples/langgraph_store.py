"""A LangGraph agent whose long-term memory store is an agentsleep home (with LangMem's memory tools).

    pip install 'agentsleep[langgraph,langmem]'
    python examples/langgraph_store.py                       # a fresh home in a temporary folder
    python examples/langgraph_store.py --home ~/.agentsleep/demo

`AgentSleepStore(home)` is a LangGraph `BaseStore`: LangMem's manage_memory /
search_memory tools (or your own nodes, through `runtime.store`) put and search
items in ("memories", user_id); each item is an episode in a hard namespace of
its own, so one user's search never sees another's, and the next sleep
consolidates them into the model's weights like any other episode.

The chat model is a small scripted stand-in so that the example runs offline in
seconds; put your own there. "Remember: X" makes it call manage_memory, "Recall: Q"
search_memory, and it reports what the tool returned.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import uuid
import warnings
from pathlib import Path

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.prebuilt import create_react_agent
from langmem import create_manage_memory_tool, create_search_memory_tool

from agentsleep.adapters.langgraph import AgentSleepStore, episode_namespace
from agentsleep.home import Home


class StandInModel(BaseChatModel):
    """Replace with your chat model (it must support tool calling)."""

    @property
    def _llm_type(self) -> str:
        return "stand-in"

    def bind_tools(self, tools, **kw):  # noqa: ANN001
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kw):  # noqa: ANN001
        last = messages[-1]
        if isinstance(last, HumanMessage):
            verb, _, arg = last.text.partition(": ")
            name, args = ("manage_memory", {"content": arg}) if verb == "Remember" else ("search_memory", {"query": arg})
            ai = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": uuid.uuid4().hex}])
        elif isinstance(last, ToolMessage) and last.name == "search_memory":
            found = [m["value"]["content"] for m in json.loads(last.text)]
            ai = AIMessage(content=f"I remember: {found[0]}" if found else "Nothing about that yet.")
        else:
            ai = AIMessage(content="Noted.")
        return ChatResult(generations=[ChatGeneration(message=ai)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=None, help="agent home (default: a temporary folder)")
    args = ap.parse_args()
    home = Home.open(args.home or Path(tempfile.mkdtemp(prefix="agentsleep-lg-")) / "home")
    store = AgentSleepStore(home)

    ns = ("memories", "{langgraph_user_id}")          # LangMem fills in the user from the config
    tools = [create_manage_memory_tool(namespace=ns), create_search_memory_tool(namespace=ns)]
    with warnings.catch_warnings():  # LangGraph 1.x points at langchain.agents.create_agent; both take store=
        warnings.simplefilter("ignore", DeprecationWarning)
        agent = create_react_agent(StandInModel(), tools, store=store)

    def say(user: str, text: str) -> None:
        out = agent.invoke({"messages": [("user", text)]}, {"configurable": {"langgraph_user_id": user}})
        print(f"{user}> {text}\nagent> {out['messages'][-1].text}")

    say("alice", "Remember: My cat Pixel is afraid of thunderstorms.")
    say("alice", "Recall: what is my pet afraid of?")
    say("bob", "Recall: what is my pet afraid of?")   # Bob's namespace: Alice's memory is not there

    print("items in ('memories', 'alice'):")
    for item in store.search(("memories", "alice")):
        print(f"  {item.key}: {item.value}")
    [ep] = home.episodes(namespace=episode_namespace(("memories", "alice")))
    print(f"as an episode: {ep.id} {ep.text!r} provenance={ep.provenance}")
    plan = home.sleep(dry_run=True)
    print(f"the next sleep would take it: {ep.id in plan.episodes} ({plan.reasons[0]})")
    store.close()
    home.close()


if __name__ == "__main__":
    main()
