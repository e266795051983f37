"""A LangChain tool-calling agent with episodic memory that sleeps.

    python examples/langchain_agent.py                      # a fresh home in a temporary folder
    python examples/langchain_agent.py --home ~/.agentsleep/demo --skip-sleep

1. Awake: the agent (the embedded SmolLM2-135M through SleepChatModel, with a
   weather tool) talks to Alice. `with_sleep` injects the top-k memories into
   every call and records each exchange and tool run as episodes.
2. Asleep: `home.sleep()` consolidates the new episodes into a new model
   version (dream -> seed -> gate); the gate may reject it, the report says why.
3. Awake again, retrieval off: the same questions go to the model alone, so
   whatever it knows now comes from its weights. SleepChatModel always serves
   the current version, so nothing has to be reloaded by hand.

Tool calls: SmolLM2's chat template has no tool support, so SleepChatModel uses
its JSON-in-text protocol (see agentsleep.adapters.langchain.chat_model). A
135M model follows it only sometimes; the script shows what happened.

Uses `langchain.agents.create_agent` when langchain is installed, else the
small loop below (langchain-core only). On CPU a sleep takes minutes.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from agentsleep.adapters.langchain import SleepChatModel, with_sleep
from agentsleep.home import Home

SYSTEM = "You are Alice's assistant. Be brief."
TOLD = [
    "My daughter is called Maya. She is seven.",
    "Maya's favourite planet is Saturn because of its rings.",
    "What's the weather in Lisbon today? Use the weather tool.",
]
QUESTIONS = ["What is my daughter's name?", "What is Maya's favourite planet?"]


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"{city}: sunny, 24 C, light wind from the north."  # a stand-in for a real weather API


def tool_loop(llm, tools, system: str, max_steps: int = 4):
    """A minimal tool-calling agent: {"messages": [...]} in, {"messages": [...]} out."""
    bound = llm.bind_tools(tools)
    by_name = {t.name: t for t in tools}

    def run(state: dict, config) -> dict:
        msgs = [("system", system), *state["messages"]]
        out = []
        for _ in range(max_steps):
            ai = bound.invoke(msgs + out, config)
            out.append(ai)
            if not ai.tool_calls:
                break
            for tc in ai.tool_calls:
                t = by_name.get(tc["name"])
                out.append(t.invoke(tc, config) if t else
                           ToolMessage(content=f"unknown tool {tc['name']}", tool_call_id=tc["id"]))
        return {"messages": [*state["messages"], *out]}

    return RunnableLambda(run, name="tool_loop")


def make_agent(llm, tools):
    try:
        from langchain.agents import create_agent  # optional
    except ImportError:
        return tool_loop(llm, tools, SYSTEM)
    return create_agent(llm, tools, system_prompt=SYSTEM)


def show_turn(question: str, state: dict) -> None:
    print(f"\nuser> {question}")
    for m in state["messages"]:
        if isinstance(m, AIMessage) and m.tool_calls:
            for tc in m.tool_calls:
                print(f"  tool call: {tc['name']}({tc['args']})")
        elif isinstance(m, ToolMessage):
            print(f"  tool result: {m.content}")
    final = next((m for m in reversed(state["messages"]) if isinstance(m, AIMessage)), None)
    version = final.response_metadata.get("model_version") if final else "?"
    print(f"agent [{version}]> {final.content if final else '(no answer)'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, help="agent home (default: a new temporary one)")
    ap.add_argument("--skip-sleep", action="store_true", help="stop after the awake part")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    root = args.home or Path(tempfile.mkdtemp(prefix="agentsleep-lc-")) / "home"
    home = Home.open(root)  # one Home per process: the embedded store allows one writer
    print(f"home: {home.root}")

    llm = SleepChatModel(home=home, max_new_tokens=64)
    agent = with_sleep(make_agent(llm, [get_weather]), home=home, k=4, session_id="alice-1",
                       tool_trust="trusted")  # our tool is local; keep web/search tools "untrusted"

    print("\n== awake, with memory ==")
    for text in TOLD + QUESTIONS:
        show_turn(text, agent.invoke({"messages": [HumanMessage(text)]}))
    print(f"\nepisodes stored: {home.store.count()} "
          f"({len(home.episodes(unconsolidated_only=True))} waiting for sleep)")

    if args.skip_sleep:
        return
    print("\n== asleep ==")
    from agentsleep.progress import StageProgress

    with StageProgress() as progress:
        report = home.sleep(progress=progress)
    print(f"sleep {report.sleep_id}: {report.status}; serving {report.version}")
    for reason in report.reasons:
        print(f"  - {reason}")

    print("\n== awake, retrieval off (answers come from the weights) ==")
    closed_book = agent.with_config(configurable={"use_memory": False, "record": False})
    for q in QUESTIONS:
        show_turn(q, closed_book.invoke({"messages": [HumanMessage(q)]}))


if __name__ == "__main__":
    main()
