"""LangChain adapter with LangChain's fake chat models over a real episode store (no LM)."""
from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest


from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.language_models.fake_chat_models import (  # noqa: E402
    FakeListChatModel,
    GenericFakeChatModel,
    ParrotFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from agentsleep.adapters.langchain import (  # noqa: E402
    MEMORY_ERROR_EVENT,
    TOOL_SYSTEM,
    CallableBackend,
    Completion,
    EpisodeChatMessageHistory,
    EpisodeRetriever,
    SleepChatModel,
    parse_tool_calls,
    with_sleep,
)
from agentsleep.config import Config, MemoryConfig  # noqa: E402
from agentsleep.home import Home  # noqa: E402
from agentsleep.procs import free_port  # noqa: E402

FACT = "Alice's daughter is called Maya and she loves astronomy."


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = Home.open(tmp_path_factory.mktemp("lc") / "home")
    h.remember(FACT)
    yield h
    h.close()


@pytest.fixture()
def sid() -> str:
    return "s-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def dead_home(tmp_path_factory):
    """A home whose store is a Chroma server that is not running."""
    root = tmp_path_factory.mktemp("lc-dead") / "home"
    Home.init(root, config=Config(memory=MemoryConfig(backend="server", port=free_port())))
    h = Home.open(root)
    yield h
    h.close()


class Spy(BaseCallbackHandler):
    """Records chat model inputs and custom events."""

    def __init__(self) -> None:
        self.prompts: list[list] = []
        self.events: list[tuple[str, Any]] = []

    def on_chat_model_start(self, serialized, messages, **kw):  # noqa: ANN001
        self.prompts.append(messages[0])

    def on_custom_event(self, name, data, **kw):  # noqa: ANN001
        self.events.append((name, data))


def turns(home: Home, sid: str) -> list:
    return [e for e in home.episodes(session=sid) if e.kind == "turn"]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 24 C in {city}"


def tiny_agent(model, tools):
    """A minimal tool-calling loop (what create_agent does), passing config so callbacks reach tools."""
    by_name = {t.name: t for t in tools}

    def run(state: dict, config) -> dict:  # noqa: ANN001
        msgs = list(state["messages"])
        for _ in range(5):
            ai = model.invoke(msgs, config)
            msgs.append(ai)
            if not ai.tool_calls:
                break
            for tc in ai.tool_calls:
                msgs.append(by_name[tc["name"]].invoke(tc, config))
        return {"messages": msgs}

    return RunnableLambda(run, name="tiny_agent")


# -- packaging ---------------------------------------------------------------------
def test_import_needs_only_langchain_core():
    code = ("import agentsleep.adapters.langchain, sys\n"
                    "bad = [m for m in sys.modules if m.split('.')[0] in ('langchain', 'langgraph')]\n"
                    "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# -- with_sleep ----------------------------------------------------------------------
def test_system_placement_injects_and_records(home, sid):
    spy = Spy()
    agent = with_sleep(FakeListChatModel(responses=["Her name is Maya."]), home=home, k=2, session_id=sid)
    out = agent.invoke("What is my daughter's name?", {"callbacks": [spy]})
    assert out.content == "Her name is Maya."
    sent = spy.prompts[0]
    assert isinstance(sent[0], SystemMessage) and FACT in sent[0].content
    assert "You are a helpful assistant with a memory" in sent[0].content  # the layout sleep trains on
    assert sent[-1].content == "What is my daughter's name?"
    [t] = turns(home, sid)
    assert t.text == "User: What is my daughter's name?\nAssistant: Her name is Maya."
    assert t.provenance["adapter"] == "langchain.with_sleep"


def test_system_placement_merges_existing_system_message(home, sid):
    spy = Spy()
    agent = with_sleep(FakeListChatModel(responses=["ok"]), home=home, session_id=sid)
    agent.invoke([("system", "Be brief."), ("user", "Who is Maya?")], {"callbacks": [spy]})
    sent = spy.prompts[0]
    assert [m.type for m in sent] == ["system", "human"]
    assert sent[0].content.startswith("Be brief.") and FACT in sent[0].content


def test_human_placement_prefixes_the_question(home, sid):
    agent = with_sleep(ParrotFakeChatModel(), home=home, placement="human", session_id=sid)
    out = agent.invoke([HumanMessage("What does Maya love?")])
    assert out.content.startswith("What you remember:\n- ") and FACT in out.content
    assert out.content.endswith("What does Maya love?")
    # the recorded turn has the user's words, not the injected memories (the parrot's reply is a
    # human message, not an answer, so no "Assistant:" line)
    assert turns(home, sid)[0].text == "User: What does Maya love?"


def test_key_placement_fills_a_prompt_variable(home, sid):
    spy = Spy()
    prompt = ChatPromptTemplate.from_messages([("system", "Known:\n{memories}"), ("human", "{question}")])
    agent = with_sleep(prompt | FakeListChatModel(responses=["astronomy"]), home=home, placement="key",
                       session_id=sid)
    assert agent.invoke({"question": "What does Maya love?"}, {"callbacks": [spy]}).content == "astronomy"
    assert FACT in spy.prompts[0][0].content
    # with memory off the variable is still there (empty), so the template does not break
    agent.invoke({"question": "hi"}, {"callbacks": [spy], "configurable": {"use_memory": False}})
    assert spy.prompts[1][0].content == "Known:\n"


def test_callable_placement_and_custom_format(home, sid):
    seen = []

    def place(value, episodes):
        seen.append([e.id for e in episodes])
        return f"[{len(episodes)} memories] {value}"

    agent = with_sleep(ParrotFakeChatModel(), home=home, k=1, placement=place, session_id=sid)
    assert agent.invoke("Maya?").content == "[1 memories] Maya?"
    assert len(seen[0]) == 1


def test_tool_calls_and_results_recorded_through_callbacks(home, sid):
    model = GenericFakeChatModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        AIMessage(content="It is sunny in Paris."),
    ]))
    agent = with_sleep(tiny_agent(model, [get_weather]), home=home, session_id=sid)
    out = agent.invoke({"messages": [("user", "Weather in Paris?")]})
    assert out["messages"][-1].content == "It is sunny in Paris."
    eps = home.episodes(session=sid)
    [tool_ep] = [e for e in eps if e.kind == "tool"]
    assert tool_ep.source == "tool:get_weather" and tool_ep.trust == "untrusted"
    assert "Paris" in tool_ep.text and "sunny and 24 C in Paris" in tool_ep.text
    [turn] = [e for e in eps if e.kind == "turn"]
    assert turn.text == "User: Weather in Paris?\nAssistant: It is sunny in Paris."


def test_tool_trust_callable(home, sid):
    model = GenericFakeChatModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "c1"}]),
        AIMessage(content="Sunny."),
    ]))
    agent = with_sleep(tiny_agent(model, [get_weather]), home=home, session_id=sid,
                       tool_trust=lambda name: "trusted" if name == "get_weather" else "untrusted")
    agent.invoke({"messages": [("user", "Oslo?")]})
    [tool_ep] = [e for e in home.episodes(session=sid) if e.kind == "tool"]
    assert tool_ep.trust == "trusted"


def test_stream_records_once_consumed(home, sid):
    agent = with_sleep(FakeListChatModel(responses=["Hello there friend"]), home=home, session_id=sid)
    it = agent.stream("Say hello")
    first = next(it)
    assert turns(home, sid) == []
    chunks = [first, *it]
    assert len(chunks) > 1 and "".join(c.content for c in chunks) == "Hello there friend"
    assert turns(home, sid)[0].text == "User: Say hello\nAssistant: Hello there friend"


def test_async_invoke_and_stream(home, sid):
    spy = Spy()
    # k=10: the module's home has recorded earlier tests' turns about Maya, which hybrid recall
    # ranks near the fact on the name alone; this test is about the async path, not the ranking
    agent = with_sleep(FakeListChatModel(responses=["a1", "a two"]), home=home, session_id=sid, k=10)

    async def go():
        r = await agent.ainvoke("Where does Maya look at stars?", {"callbacks": [spy]})
        chunks = [c async for c in agent.astream("Second question")]
        return r, chunks

    r, chunks = asyncio.run(go())
    assert r.content == "a1" and "".join(c.content for c in chunks) == "a two"
    assert FACT in spy.prompts[0][0].content
    assert sorted(t.text for t in turns(home, sid)) == ["User: Second question\nAssistant: a two",
                                                        "User: Where does Maya look at stars?\nAssistant: a1"]


def test_batch_and_per_call_config(home, sid):
    agent = with_sleep(FakeListChatModel(responses=["x"]), home=home, session_id=sid)
    agent.batch(["one", "two"])
    assert sorted(t.text for t in turns(home, sid)) == ["User: one\nAssistant: x", "User: two\nAssistant: x"]
    other = sid + "-b"
    agent.invoke("three", {"configurable": {"session_id": other}})
    agent.invoke("four", {"configurable": {"session_id": other, "record": False}})
    assert [t.text for t in turns(home, other)] == ["User: three\nAssistant: x"]


def test_store_unavailable_agent_keeps_working(dead_home, caplog):
    spy = Spy()
    hook: list[str] = []
    agent = with_sleep(FakeListChatModel(responses=["still here"]), home=dead_home, session_id="s",
                       on_memory_error=lambda stage, err: hook.append(stage))
    with caplog.at_level(logging.WARNING, logger="agentsleep.adapters.langchain"):
        out = agent.invoke("anything?", {"callbacks": [spy]})
        assert out.content == "still here"
        assert [m.type for m in spy.prompts[0]] == ["human"]  # nothing injected
        # the next call skips memory quickly instead of waiting on the server again, and says so
        assert agent.invoke("again?", {"callbacks": [spy]}).content == "still here"
    assert hook == ["recall", "record", "recall", "record"]
    names = [n for n, _ in spy.events]
    assert names == [MEMORY_ERROR_EVENT] * 4
    assert [d["stage"] for _, d in spy.events] == ["recall", "record", "recall", "record"]
    assert spy.events[0][1]["error_type"] == "StoreUnavailableError"
    assert spy.events[2][1]["error_type"] == "MemoryUnavailable"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and "StoreUnavailableError" in warnings[0].getMessage()


class _BrokenHome:
    def recall(self, *a, **kw):
        from agentsleep.errors import StoreUnavailableError

        raise StoreUnavailableError("episode store: test outage")

    remember = recall


def test_store_unavailable_async_and_stream(caplog):
    spy = Spy()
    agent = with_sleep(FakeListChatModel(responses=["fine"]), home=_BrokenHome(), retry_after=0)

    async def go():
        r = await agent.ainvoke("q", {"callbacks": [spy]})
        return r, [c async for c in agent.astream("q", {"callbacks": [spy]})]

    with caplog.at_level(logging.WARNING, logger="agentsleep.adapters.langchain"):
        r, chunks = asyncio.run(go())
        assert "".join(c.content for c in agent.stream("q", {"callbacks": [spy]})) == "fine"
    assert r.content == "fine" and "".join(c.content for c in chunks) == "fine"
    assert [d["stage"] for _, d in spy.events] == ["recall", "record"] * 3
    assert all("test outage" in d["error"] for _, d in spy.events)
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 6


def test_wrapped_runnable_errors_propagate(home):
    def boom(_):
        raise ValueError("agent failed")

    with pytest.raises(ValueError, match="agent failed"):
        with_sleep(RunnableLambda(boom), home=home).invoke("x")


def test_with_sleep_validates_arguments(home):
    with pytest.raises(ValueError, match="placement"):
        with_sleep(FakeListChatModel(responses=["x"]), home=home, placement="middle")
    with pytest.raises(ValueError, match="k must be"):
        with_sleep(FakeListChatModel(responses=["x"]), home=home, k=0)
    with pytest.raises(TypeError, match="Runnable"):
        with_sleep(lambda x: x, home=home)
    with pytest.raises(ValueError, match="recall_filters may not hold 'namespace'"):
        with_sleep(FakeListChatModel(responses=["x"]), home=home, recall_filters={"namespace": "user:a"})


# -- retriever and history -------------------------------------------------------------
def test_retriever_returns_documents(home, sid):
    home.remember("Maya's telescope is a red Dobsonian.", session=sid)
    docs = EpisodeRetriever(home=home, k=2, session=sid).invoke("What telescope does Maya have?")
    assert [d.page_content for d in docs] == ["Maya's telescope is a red Dobsonian."]
    md = docs[0].metadata
    assert md["session"] == sid and md["kind"] == "fact" and md["id"].startswith("ep-") and md["score"] > 0.3
    assert len(EpisodeRetriever(home=home, k=3).invoke("Maya")) == 3
    assert asyncio.run(EpisodeRetriever(home=home, k=1, session=sid).ainvoke("telescope"))[0].id == md["id"]


def test_retriever_errors(dead_home, caplog):
    from agentsleep.errors import StoreUnavailableError

    with pytest.raises(StoreUnavailableError):
        EpisodeRetriever(home=_BrokenHome()).invoke("q")
    spy = Spy()
    with caplog.at_level(logging.WARNING, logger="agentsleep.adapters.langchain"):
        assert EpisodeRetriever(home=_BrokenHome(), on_error="warn").invoke("q", {"callbacks": [spy]}) == []
    assert spy.events and spy.events[0][1]["stage"] == "retrieve"
    assert any("test outage" in r.getMessage() for r in caplog.records)


def test_history_roundtrip_with_tools_and_duplicates(home, sid):
    h = EpisodeChatMessageHistory(sid, home=home)
    msgs = [
        HumanMessage("thanks"),
        AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Rome"}, "id": "t1"}]),
        ToolMessage(content="sunny in Rome", tool_call_id="t1", name="get_weather"),
        AIMessage(content="It is sunny."),
        HumanMessage("thanks"),  # an exact duplicate in the same session
        HumanMessage(""),
    ]
    h.add_messages(msgs)
    got = h.messages
    assert [type(m).__name__ for m in got] == [type(m).__name__ for m in msgs]
    assert [m.content for m in got] == [m.content for m in msgs]
    assert got[1].tool_calls[0]["args"] == {"city": "Rome"} and got[1].tool_calls[0]["id"] == "t1"
    assert got[2].tool_call_id == "t1" and got[2].name == "get_weather"
    # another session saying the same thing keeps its own complete history
    other = EpisodeChatMessageHistory(sid + "-2", home=home)
    other.add_user_message("thanks")
    assert [m.content for m in other.messages] == ["thanks"]
    # the messages are memories: kinds and sources as with_sleep records them
    eps = home.episodes(session=sid)
    assert {e.kind for e in eps} == {"turn", "tool"}
    assert [e.source for e in eps if e.kind == "tool"] == ["tool:get_weather"]
    h.clear()
    assert h.messages == [] and home.episodes(session=sid) == []
    assert [m.content for m in other.messages] == ["thanks"]


@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
def test_history_long_message_and_runnable_with_message_history(home, sid):
    from langchain_core.runnables.history import RunnableWithMessageHistory

    long = "Maya " + "observes Jupiter every night. " * 60  # over memory.chunk_chars: stored as chunks
    h = EpisodeChatMessageHistory(sid, home=home)
    h.add_user_message(long)
    assert h.messages[0].content == long.strip()
    chain = RunnableWithMessageHistory(FakeListChatModel(responses=["first", "second"]),
                                       lambda session_id: EpisodeChatMessageHistory(session_id, home=home))
    cfg = {"configurable": {"session_id": sid + "-rwmh"}}
    chain.invoke("first", cfg)
    chain.invoke("second", cfg)
    got = EpisodeChatMessageHistory(sid + "-rwmh", home=home).messages
    assert [(m.type, m.content) for m in got] == [("human", "first"), ("ai", "first"),
                                                  ("human", "second"), ("ai", "second")]


# -- SleepChatModel with a pluggable backend --------------------------------------------
class RecordingBackend:
    """A ChatBackend whose template 'supports tools', returning scripted text."""

    def __init__(self, replies, *, supports_tools=True, version="v0042"):
        self.replies = list(replies)
        self._tools = supports_tools
        self.version = version
        self.calls: list[dict] = []

    @property
    def supports_tools(self) -> bool:
        return self._tools

    def generate(self, messages, *, tools=None, max_new_tokens=None, stop=None):
        self.calls.append({"messages": messages, "tools": tools})
        return Completion(self.replies.pop(0), self.version)

    def stream(self, messages, *, tools=None, max_new_tokens=None, stop=None):
        text = self.generate(messages, tools=tools).text
        for i in range(0, len(text), 3):
            yield Completion(text[i:i + 3], self.version)


def test_chat_model_callable_backend_and_version():
    seen = []

    def fn(messages, *, tools=None, max_new_tokens=None, stop=None):
        seen.append(messages)
        return Completion("Hello Alice. STOP here", "v0007")

    m = SleepChatModel(backend=fn)
    r = m.invoke([("system", "sys"), ("user", "hi")], stop=["STOP"])
    assert r.content == "Hello Alice. " and r.response_metadata["model_version"] == "v0007"
    assert seen[0] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]


def test_json_tool_protocol_when_template_has_no_tools():
    reply = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    backend = RecordingBackend([reply, "It is sunny."], supports_tools=False)
    llm = SleepChatModel(backend=backend).bind_tools([get_weather])
    r = llm.invoke("Weather in Paris?")
    assert r.content == "Let me check."
    assert [(c["name"], c["args"]) for c in r.tool_calls] == [("get_weather", {"city": "Paris"})]
    sent = backend.calls[0]
    assert sent["tools"] is None  # not rendered by the template...
    assert sent["messages"][0]["role"] == "system" and "<tools>" in sent["messages"][0]["content"]
    assert '"name": "get_weather"' in sent["messages"][0]["content"]  # ...but in the system prompt
    # the follow-up renders the call and its result in the protocol's text form
    llm.invoke([HumanMessage("Weather in Paris?"), r,
                ToolMessage(content="sunny", tool_call_id=r.tool_calls[0]["id"], name="get_weather")])
    msgs = backend.calls[1]["messages"]
    assert msgs[2]["role"] == "assistant" and "<tool_call>" in msgs[2]["content"]
    assert msgs[3] == {"role": "user", "content": '<tool_response>\n{"name": "get_weather", "content": "sunny"}\n'
                                                  '</tool_response>'}


def test_native_tools_when_template_supports_them():
    backend = RecordingBackend(['<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>',
                                "done"])
    llm = SleepChatModel(backend=backend).bind_tools([get_weather], tool_choice="get_weather")
    r = llm.invoke("Rome?")
    assert r.tool_calls[0]["args"] == {"city": "Rome"}
    assert backend.calls[0]["tools"][0]["function"]["name"] == "get_weather"
    assert backend.calls[0]["messages"] == [{"role": "user", "content": "Rome?"}]
    llm.invoke([HumanMessage("Rome?"), r, ToolMessage(content="warm", tool_call_id=r.tool_calls[0]["id"],
                                                      name="get_weather")])
    msgs = backend.calls[1]["messages"]
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Rome"}}
    assert msgs[2] == {"role": "tool", "content": "warm", "tool_call_id": r.tool_calls[0]["id"],
                       "name": "get_weather"}
    with pytest.raises(ValueError, match="not one of the bound tools"):
        SleepChatModel(backend=backend).bind_tools([get_weather], tool_choice="nope")
    with pytest.raises(ValueError, match="does not render tools"):
        SleepChatModel(backend=RecordingBackend(["x"], supports_tools=False), tool_protocol="template") \
            .bind_tools([get_weather]).invoke("x")


def test_streaming_tool_calls_and_text():
    reply = 'Checking <tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>'
    llm = SleepChatModel(backend=RecordingBackend([reply, "Plain answer here."])).bind_tools([get_weather])
    chunks = list(llm.stream("Lima?"))
    assert all("<tool" not in c.content for c in chunks)  # the call is never shown as text
    agg = chunks[0]
    for c in chunks[1:]:
        agg = agg + c
    assert agg.content == "Checking " and agg.tool_calls[0]["args"] == {"city": "Lima"}
    assert agg.response_metadata["model_version"] == "v0042"
    chunks = list(llm.stream("again"))
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == "Plain answer here."


def test_parse_tool_calls_variants():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert parse_tool_calls('{"name": "f", "arguments": {"a": 1}}', tools)[1][0]["args"] == {"a": 1}
    assert parse_tool_calls('```json\n{"name": "f", "args": {"a": 2}}\n```', tools)[1][0]["args"] == {"a": 2}
    content, calls, invalid = parse_tool_calls("<tool_call>{not json}</tool_call>", tools)
    assert calls == [] and invalid[0]["args"] == "{not json}" and "JSON" in invalid[0]["error"]
    assert parse_tool_calls('{"name": "g"}', tools) == ('{"name": "g"}', [], [])  # not a bound tool: text
    assert parse_tool_calls("no calls", tools) == ("no calls", [], [])
    assert "<tool_call>" in TOOL_SYSTEM


def test_with_sleep_around_sleep_chat_model(home, sid):
    backend = RecordingBackend(["Maya."], supports_tools=False)
    agent = with_sleep(SleepChatModel(backend=backend), home=home, session_id=sid)
    assert agent.invoke("Who is my daughter?").content == "Maya."
    assert backend.calls[0]["messages"][0]["role"] == "system" and FACT in backend.calls[0]["messages"][0]["content"]
    assert turns(home, sid)[0].text == "User: Who is my daughter?\nAssistant: Maya."
    assert isinstance(CallableBackend(lambda m, **k: "x").generate([]), Completion)


def test_namespaces_through_with_sleep_and_the_retriever(home, sid):
    spy = Spy()
    home.remember("Noor's locker code is 5512.", namespace=f"user:noor-{sid}")
    home.remember("Sam's locker code is 9034.", namespace=f"user:sam-{sid}")
    agent = with_sleep(FakeListChatModel(responses=["ok"] * 3), home=home, k=3, session_id=sid,
                       namespace=f"user:noor-{sid}")
    agent.invoke("What is my locker code?", {"callbacks": [spy]})
    system = spy.prompts[0][0].content
    assert "5512" in system and "9034" not in system
    agent.invoke("And my other code?", {"callbacks": [spy], "configurable": {"namespace": f"user:sam-{sid}"}})
    system = spy.prompts[1][0].content
    assert "9034" in system and "5512" not in system
    assert {e.namespace for e in home.episodes(session=sid)} == {f"user:noor-{sid}", f"user:sam-{sid}"}
    docs = EpisodeRetriever(home=home, k=5, namespace=f"user:sam-{sid}").invoke("locker code")
    assert {d.metadata["namespace"] for d in docs} == {f"user:sam-{sid}"} and "9034" in docs[0].page_content
    assert EpisodeRetriever(home=home, k=5, namespace=f"user:nobody-{sid}").invoke("locker code") == []


def test_with_sleep_records_the_answer_of_a_langgraph_message_stream_and_of_this_turn_only(home, sid):
    """stream_mode="messages" yields (message chunk, metadata) pairs: the turn records the streamed text,
    not a metadata string; with a checkpointer the thread holds earlier turns, and a turn that ends without
    text must not record the previous answer as its own."""
    from langchain_core.messages import AIMessageChunk
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, MessagesState, StateGraph

    replies = iter(["The capital is Lima.", ""])

    def node(state: MessagesState):
        return {"messages": [FakeListChatModel(responses=[next(replies)]).invoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("model", node)
    g.add_edge(START, "model")
    graph = g.compile(checkpointer=InMemorySaver())
    agent = with_sleep(graph, home=home, session_id=sid)
    cfg = {"configurable": {"thread_id": sid}}
    chunks = list(agent.stream({"messages": [HumanMessage("Capital of Peru?")]}, cfg, stream_mode="messages"))
    assert chunks and all(isinstance(c, tuple) and isinstance(c[0], AIMessageChunk) for c in chunks)
    assert [t.text for t in turns(home, sid)] == ["User: Capital of Peru?\nAssistant: The capital is Lima."]
    out = agent.invoke({"messages": [HumanMessage("And of Chile?")]}, cfg)
    # the thread: both turns and one memory prompt (this turn's replaced the last one's: same id)
    assert [m.type for m in out["messages"]] == ["system", "human", "ai", "human", "ai"]
    assert sorted(t.text for t in turns(home, sid)) == ["User: And of Chile?",
                                                        "User: Capital of Peru?\nAssistant: The capital is Lima."]


def test_history_is_per_namespace_safe_under_threads_and_clears_all_or_nothing(home, sid):
    import threading

    from agentsleep.errors import SleepLockedError
    from agentsleep.sleep.lock import sleep_lock

    ana = EpisodeChatMessageHistory(sid, home=home, namespace="user:ana")
    ben = EpisodeChatMessageHistory(sid, home=home, namespace="user:ben")
    ana.add_user_message("My locker code is 7731.")
    assert ben.messages == [] and [m.content for m in ana.messages] == ["My locker code is 7731."]
    assert home.recall("locker code", k=5) == [] or all(e.namespace == "default" for e in home.recall("locker code", k=5))
    assert [e.namespace for e in home.recall("locker code", k=5, namespace="user:ana")] == ["user:ana"]
    # two threads adding to one history: every message keeps a sequence number of its own
    threads = [threading.Thread(target=lambda n=n: ben.add_messages([HumanMessage(f"note {n}.{i}") for i in range(4)]))
               for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [int(p["lc_seq"]) for p, _, _ in ben._records()]
    assert len(seqs) == 12 and len(set(seqs)) == 12
    for n in range(3):  # each thread's messages stay in the order it added them
        mine = [m.content for m in ben.messages if m.content.startswith(f"note {n}.")]
        assert mine == [f"note {n}.{i}" for i in range(4)]
    with sleep_lock(home.root, what="test sleep"):  # a sleep runs: nothing is forgotten, not some
        with pytest.raises(SleepLockedError):
            ben.clear()
    assert len(ben.messages) == 12
    ben.clear()
    assert ben.messages == [] and [m.content for m in ana.messages] == ["My locker code is 7731."]
