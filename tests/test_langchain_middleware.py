"""SleepMiddleware in a real `langchain.agents.create_agent` agent: a scripted chat model, a real tool,
a real episode store; sync, async and streaming, per-call options, and memory failures."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from agentsleep.adapters.langchain import MEMORY_ERROR_EVENT, SleepMiddleware  # noqa: E402
from agentsleep.home import Home  # noqa: E402

FACT = "Alice's daughter is called Maya and she loves astronomy."


class ScriptedModel(BaseChatModel):
    """Calls get_weather for a question about the weather, then answers from the tool's result and from
    whatever memory reached its system message (so a test sees what was injected)."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kw: Any) -> "ScriptedModel":
        return self

    def _reply(self, messages: list) -> AIMessage:
        last = messages[-1]
        system = next((m.content for m in messages if isinstance(m, SystemMessage)), "")
        if isinstance(last, HumanMessage) and "weather" in last.content:
            city = last.content.rstrip("?").split()[-1]
            return AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": city},
                                                      "id": "call-" + uuid.uuid4().hex[:6]}])
        if isinstance(last, ToolMessage):
            return AIMessage(content=f"It is {last.content}.")
        return AIMessage(content="Her name is Maya." if "Maya" in system else "I do not know.")

    def _generate(self, messages, stop=None, run_manager=None, **kw) -> ChatResult:  # noqa: ANN001
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _stream(self, messages, stop=None, run_manager=None, **kw):  # noqa: ANN001
        ai = self._reply(messages)
        if ai.tool_calls:
            tc = ai.tool_calls[0]
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[
                {"name": tc["name"], "args": json.dumps(tc["args"]), "id": tc["id"], "index": 0}]))
            return
        for word in ai.content.split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 24 C in {city}"


class Spy(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[list] = []
        self.events: list[tuple[str, Any]] = []

    def on_chat_model_start(self, serialized, messages, **kw):  # noqa: ANN001
        self.prompts.append(messages[0])

    def on_custom_event(self, name, data, **kw):  # noqa: ANN001
        self.events.append((name, data))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = Home.open(tmp_path_factory.mktemp("mw") / "home")
    h.remember(FACT)
    yield h
    h.close()


@pytest.fixture()
def sid() -> str:
    return "s-" + uuid.uuid4().hex[:8]


def _agent(home, **kw):
    return create_agent(ScriptedModel(), [get_weather], system_prompt="Be brief.",
                        middleware=[SleepMiddleware(home, k=1, recall_filters={"kind": "fact"}, **kw)])


def _session(home: Home, sid: str) -> list:
    return home.episodes(session=sid)


def test_importing_the_adapter_does_not_import_langchain():
    code = ("import agentsleep.adapters.langchain as a, sys\n"
            "assert 'langchain.agents' not in sys.modules\n"
            "assert a.SleepMiddleware.__name__ == 'SleepMiddleware' and 'langchain.agents' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_injects_before_the_model_and_records_the_turn(home, sid):
    spy = Spy()
    out = _agent(home).invoke({"messages": [("user", "What is my daughter's name?")]},
                              {"callbacks": [spy], "configurable": {"session_id": sid}})
    assert out["messages"][-1].content == "Her name is Maya."
    sent = spy.prompts[0]
    assert isinstance(sent[0], SystemMessage) and sent[0].content.startswith("Be brief.") and FACT in sent[0].content
    assert [m.type for m in out["messages"]] == ["human", "ai"]        # the state holds no injected message
    [turn] = _session(home, sid)
    assert turn.kind == "turn" and turn.text == "User: What is my daughter's name?\nAssistant: Her name is Maya."
    assert turn.provenance["adapter"] == "langchain.middleware" and turn.provenance["memories_used"]


def test_tool_runs_become_tool_episodes(home, sid):
    out = _agent(home).invoke({"messages": [("user", "What is the weather in Paris?")]},
                              {"configurable": {"session_id": sid}})
    assert out["messages"][-1].content == "It is sunny and 24 C in Paris."
    eps = {e.kind: e for e in _session(home, sid)}
    assert set(eps) == {"tool", "turn"}
    assert eps["tool"].text == 'Tool get_weather called with {"city": "Paris"} returned: sunny and 24 C in Paris'
    assert eps["tool"].source == "tool:get_weather" and eps["tool"].trust == "untrusted"
    assert eps["turn"].text.endswith("Assistant: It is sunny and 24 C in Paris.")


def test_per_call_options(home, sid):
    spy = Spy()
    agent = _agent(home)
    out = agent.invoke({"messages": [("user", "What is my daughter's name?")]},
                       {"callbacks": [spy], "configurable": {"session_id": sid, "use_memory": False}})
    assert out["messages"][-1].content == "I do not know."
    assert FACT not in spy.prompts[0][0].content
    agent.invoke({"messages": [("user", "Remember nothing of this.")]},
                 {"configurable": {"session_id": sid, "record": False}})
    assert [e.text for e in _session(home, sid)] == ["User: What is my daughter's name?\nAssistant: I do not know."]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        SleepMiddleware(home, k=0)
    with pytest.raises(ValueError, match="namespace must be a non-empty string"):
        SleepMiddleware(home, namespace=" ")
    with pytest.raises(ValueError, match="recall_filters may not hold 'namespace'"):
        SleepMiddleware(home, recall_filters={"namespace": "user:a"})


def test_async_and_streaming(home, sid):
    agent = _agent(home)

    async def go():
        out = await agent.ainvoke({"messages": [("user", "What is the weather in Oslo?")]},
                                  {"configurable": {"session_id": sid}})
        assert out["messages"][-1].content == "It is sunny and 24 C in Oslo."
        tokens = []
        async for chunk, meta in agent.astream({"messages": [("user", "What is my daughter's name, please?")]},
                                               {"configurable": {"session_id": sid}}, stream_mode="messages"):
            if isinstance(chunk, AIMessageChunk):
                tokens.append(chunk.content)
        assert "".join(tokens).strip() == "Her name is Maya."

    asyncio.run(go())
    tokens = [c.content for c, _ in agent.stream({"messages": [("user", "And my daughter's name again?")]},
                                                 {"configurable": {"session_id": sid}}, stream_mode="messages")
              if isinstance(c, AIMessageChunk)]
    assert "".join(tokens).strip() == "Her name is Maya."
    texts = [e.text for e in _session(home, sid)]
    assert sorted(e.kind for e in _session(home, sid)) == ["tool", "turn", "turn", "turn"]
    assert "User: What is my daughter's name, please?\nAssistant: Her name is Maya." in texts
    assert "User: What is the weather in Oslo?\nAssistant: It is sunny and 24 C in Oslo." in texts
    assert "User: And my daughter's name again?\nAssistant: Her name is Maya." in texts


def test_with_a_checkpointer_only_the_new_turn_is_recorded(home, sid):
    agent = create_agent(ScriptedModel(), [get_weather],
                         middleware=[SleepMiddleware(home, k=1, recall_filters={"kind": "fact"})],
                         checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": sid, "session_id": sid}}
    agent.invoke({"messages": [("user", "What is the weather in Rome?")]}, cfg)
    out = agent.invoke({"messages": [("user", "Who is my daughter?")]}, cfg)
    assert out["messages"][-1].content == "Her name is Maya."
    assert not any(isinstance(m, SystemMessage) for m in out["messages"])
    assert sorted(e.kind for e in _session(home, sid)) == ["tool", "turn", "turn"]
    history = list(agent.get_state_history(cfg))
    assert history and not any("astronomy" in str(snap.values) for snap in history)  # no memory in any checkpoint


def test_a_run_resumed_by_another_process_recalls_its_memories_again(home, sid):
    """The memories live in the process that started the run; a model call in a process that does not
    hold them (here: they are dropped while the tool runs) recalls them again."""
    mw = SleepMiddleware(home, k=1, recall_filters={"kind": "fact"})

    @tool("get_weather")
    def weather_elsewhere(city: str) -> str:
        """The weather in a city."""
        mw._held.clear()
        return f"sunny and 24 C in {city}"
    spy = Spy()
    agent = create_agent(ScriptedModel(), [weather_elsewhere], system_prompt="Be brief.", middleware=[mw])
    agent.invoke({"messages": [("user", "What is the weather in Oslo?")]},
                 {"callbacks": [spy], "configurable": {"session_id": sid}})
    assert len(spy.prompts) == 2 and all(FACT in p[0].content for p in spy.prompts)
    assert not mw._held  # released when the run ended


def test_a_memory_forgotten_during_a_run_leaves_its_later_model_calls(home, sid):
    ns = "forget-" + sid
    ep = home.remember("Alice's daughter is called Maya and she collects fossils.", kind="fact", namespace=ns)
    mw = SleepMiddleware(home, k=1, namespace=ns)

    @tool("get_weather")
    def weather_then_forget(city: str) -> str:
        """The weather in a city."""
        home.forget(ep.id, namespace=ns)
        return f"sunny and 24 C in {city}"
    spy = Spy()
    agent = create_agent(ScriptedModel(), [weather_then_forget], system_prompt="Be brief.", middleware=[mw])
    agent.invoke({"messages": [("user", "What is the weather in Oslo?")]},
                 {"callbacks": [spy], "configurable": {"session_id": sid}})
    assert [("fossils" in p[0].content) for p in spy.prompts] == [True, False]


def test_namespaces_are_hard_partitions(home, sid):
    spy = Spy()
    agent = _agent(home, namespace="user:bob")
    out = agent.invoke({"messages": [("user", "What is my daughter's name?")]}, {"callbacks": [spy],
                       "configurable": {"session_id": sid}})
    assert out["messages"][-1].content == "I do not know."            # Alice's fact is in "default"
    assert FACT not in spy.prompts[0][0].content
    [turn] = home.episodes(session=sid, namespace="user:bob")
    assert turn.namespace == "user:bob" and home.episodes(session=sid, namespace="default") == []
    # per call: this run reads and writes Alice's namespace
    out = agent.invoke({"messages": [("user", "Tell me my daughter's name.")]},
                       {"configurable": {"session_id": sid, "namespace": "default"}})
    assert out["messages"][-1].content == "Her name is Maya."
    assert [e.text for e in home.episodes(session=sid, namespace="default")] == ["User: Tell me my daughter's name.\nAssistant: Her name is Maya."]


def test_a_bad_namespace_fails_the_call_before_anything_happens(home, sid):
    from agentsleep.errors import InputError

    spy = Spy()
    with pytest.raises(InputError, match="namespace .* contains control characters"):
        _agent(home).invoke({"messages": [("user", "Hello?")]},
                            {"callbacks": [spy], "configurable": {"session_id": sid, "namespace": "bad\x07"}})
    assert spy.prompts == [] and home.episodes(session=sid) == []


def test_without_langchain_the_adapter_still_imports_and_says_what_to_install(tmp_path):
    fake = tmp_path / "langchain"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'langchain'\")\n")
    code = ("import agentsleep.adapters.langchain as a\n"
            "try:\n    a.SleepMiddleware\nexcept ImportError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "needs langchain: pip install 'agentsleep[langchain]'" in r.stdout


class _BrokenHome:
    def recall(self, *a, **kw):
        from agentsleep.errors import StoreUnavailableError

        raise StoreUnavailableError("episode store: test outage")

    remember = recall


def test_memory_failure_warns_sends_the_event_and_the_agent_goes_on(caplog):
    spy, hook = Spy(), []
    agent = create_agent(ScriptedModel(), [get_weather],
                         middleware=[SleepMiddleware(_BrokenHome(), on_memory_error=lambda s, e: hook.append(s))])
    with caplog.at_level(logging.WARNING, logger="agentsleep.adapters.langchain"):
        out = agent.invoke({"messages": [("user", "What is the weather in Paris?")]}, {"callbacks": [spy]})
        assert out["messages"][-1].content == "It is sunny and 24 C in Paris."
        out = asyncio.run(agent.ainvoke({"messages": [("user", "What is my daughter's name?")]}, {"callbacks": [spy]}))
        assert out["messages"][-1].content == "I do not know."
    assert hook == ["recall", "record", "recall", "record"]
    assert [n for n, _ in spy.events] == [MEMORY_ERROR_EVENT] * 4
    assert spy.events[0][1]["error_type"] == "StoreUnavailableError"
    assert spy.events[2][1]["error_type"] == "MemoryUnavailable"     # skipped quickly while it is down
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and "test outage" in warnings[0]
