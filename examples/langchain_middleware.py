"""SleepMiddleware in a LangChain v1 agent (`langchain.agents.create_agent`).

    pip install 'agentsleep[langchain]'
    python examples/langchain_middleware.py                  # a fresh home in a temporary folder
    python examples/langchain_middleware.py --home ~/.agentsleep/demo

The middleware recalls the top-k memories for the user's latest message before
the model is called (into the system message of every model call of the run)
and, after the agent step, records the exchange and the tool runs as episodes
that the next `agentsleep sleep-now` (or the daemon) consolidates into the weights.

The chat model here is a small scripted stand-in so that the example runs
offline in seconds; put your own there (`ChatOpenAI(...)`, `SleepChatModel(home=home)`,
...). It calls the weather tool when asked about the weather and otherwise
answers from whatever memory reached its system message.
"""
from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

from agentsleep.adapters.langchain import SleepMiddleware
from agentsleep.home import Home


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny and 24 C in {city}"  # a stand-in for a real weather API


class StandInModel(BaseChatModel):
    """Replace with your chat model. Calls get_weather for weather questions, else quotes its memories."""

    @property
    def _llm_type(self) -> str:
        return "stand-in"

    def bind_tools(self, tools, **kw):  # noqa: ANN001
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kw):  # noqa: ANN001
        last = messages[-1]
        system = next((m.text for m in messages if isinstance(m, SystemMessage)), "")
        if isinstance(last, HumanMessage) and "weather" in last.text:
            city = last.text.rstrip("?").split()[-1]
            ai = AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": uuid.uuid4().hex}])
        elif isinstance(last, ToolMessage):
            ai = AIMessage(content=f"It is {last.text}.")
        else:
            known = [line for line in system.splitlines() if "Maya" in line]
            ai = AIMessage(content=f"From memory: {known[0].strip().lstrip('- ')}" if known else "I don't know yet.")
        return ChatResult(generations=[ChatGeneration(message=ai)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=None, help="agent home (default: a temporary folder)")
    args = ap.parse_args()
    home = Home.open(args.home or Path(tempfile.mkdtemp(prefix="agentsleep-mw-")) / "home")
    home.remember("Alice's daughter is called Maya; she is seven.", namespace="user:alice")

    agent = create_agent(StandInModel(), [get_weather], system_prompt="You are Alice's assistant. Be brief.",
                         middleware=[SleepMiddleware(home, k=2, namespace="user:alice")])
    for question in ["What is my daughter's name?", "What is the weather in Lisbon?"]:
        out = agent.invoke({"messages": [("user", question)]}, {"configurable": {"session_id": "chat-1"}})
        print(f"user> {question}\nagent> {out['messages'][-1].text}")
    # per call: another user's namespace is a hard partition, so nothing about Maya reaches the model
    out = agent.invoke({"messages": [("user", "What is my daughter's name?")]},
                       {"configurable": {"namespace": "user:bob", "session_id": "chat-2"}})
    print(f"bob> What is my daughter's name?\nagent> {out['messages'][-1].text}")

    print("episodes recorded for Alice (the next sleep consolidates them):")
    for e in home.episodes(namespace="user:alice", session="chat-1"):
        print(f"  [{e.kind}] {e.text!r}")
    print(f"episodes in user:bob: {len(home.episodes(namespace='user:bob'))}")
    home.close()


if __name__ == "__main__":
    main()
