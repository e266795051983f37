"""AgentSleepStore against LangGraph's store contract: the same operations run on InMemoryStore (the reference)
and on the episode store must give the same items; plus what only this store promises (hard namespaces,
episodes the sleep takes, forgetting), bad input, async, and a real create_react_agent with LangMem's tools."""
from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import GetOp, InvalidNamespaceError, ListNamespacesOp, MatchCondition, PutOp, SearchOp  # noqa: E402
from langgraph.store.memory import InMemoryStore  # noqa: E402

from agentsleep.adapters.langgraph import AgentSleepStore, episode_namespace, text_of  # noqa: E402
from agentsleep.errors import InputError, SleepLockedError  # noqa: E402
from agentsleep.home import Home  # noqa: E402

ITEMS = [
    (("memories", "alice"), "tea", {"content": "Alice drinks jasmine green tea every morning.", "kind": "pref", "n": 3}),
    (("memories", "alice"), "job", {"content": "Alice works as a marine biologist in Lisbon.", "kind": "fact", "n": 7}),
    (("memories", "alice", "profile"), "age", {"content": "Alice is 34 years old.", "kind": "fact", "n": 34,
                                               "meta": {"source": "chat", "tags": ["a", "b"]}}),
    (("memories", "bob"), "tea", {"content": "Bob cannot stand tea and drinks black coffee.", "kind": "pref", "n": 1}),
    (("docs", "bob", "profile"), "cv", {"content": "Bob wrote a CV listing twelve years of carpentry.", "kind": "doc", "n": 12}),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = Home.open(tmp_path_factory.mktemp("lg") / "home")
    yield h
    h.close()


def _pair(home):
    """The reference and ours with ITEMS, under a prefix of their own (the home is shared by the tests)."""
    run = uuid.uuid4().hex[:6]
    ours = AgentSleepStore(home)
    ref = InMemoryStore()
    items = [((run, *ns), k, v) for ns, k, v in ITEMS]
    for s in (ref, ours):
        for ns, k, v in items:
            s.put(ns, k, v)
    return ref, ours, run


@pytest.fixture(scope="module")
def stores(home):
    """Shared by the tests that only read (and those that write only under namespaces of their own)."""
    ref, ours, run = _pair(home)
    yield ref, ours, run
    ours.close()


@pytest.fixture()
def fresh(home):
    ref, ours, run = _pair(home)
    yield ref, ours, run
    ours.close()


def _plain(items) -> list[tuple]:
    return [(tuple(i.namespace), i.key, json.dumps(i.value, sort_keys=True)) for i in items]


def _same(a, b) -> None:
    assert sorted(_plain(a)) == sorted(_plain(b))


# -- the contract, against the reference ------------------------------------------------
def test_get_put_overwrite_delete_match_the_reference(fresh):
    ref, ours, run = fresh
    for s in (ref, ours):
        s.put((run, "memories", "alice"), "tea", {"content": "Alice switched to oolong.", "n": 4})
        s.delete((run, "memories", "bob"), "tea")
        s.delete((run, "memories", "bob"), "never-there")           # a no-op, as in the reference
    for ns, k, _ in ITEMS:
        a, b = ref.get((run, *ns), k), ours.get((run, *ns), k)
        assert (a is None) == (b is None)
        if a is not None:
            assert (tuple(b.namespace), b.key, b.value) == (tuple(a.namespace), a.key, a.value)
            assert b.created_at <= b.updated_at
    assert ours.get((run, "nowhere"), "tea") is None
    before = ours.get((run, "memories", "alice"), "job")
    ours.put((run, "memories", "alice"), "job", {"content": "Alice works as a marine biologist in Porto.", "n": 7})
    after = ours.get((run, "memories", "alice"), "job")
    assert after.created_at == before.created_at and after.updated_at > before.updated_at


@pytest.mark.parametrize("prefix,filt", [
    ((), None), (("memories",), None), (("memories", "alice"), None), (("docs",), None), (("nope",), None),
    (("memories",), {"kind": "pref"}), ((), {"n": {"$gt": 3}}), ((), {"n": {"$gte": 3, "$lt": 34}}),
    ((), {"kind": {"$ne": "fact"}}), ((), {"meta": {"source": "chat"}}), ((), {"meta": {"tags": ["a", "b"]}}),
    ((), {"n": {"$lte": 1}}), ((), {"missing": 1}),
])
def test_search_without_query_matches_the_reference(stores, prefix, filt):
    ref, ours, run = stores
    p = (run, *prefix)
    _same(ours.search(p, filter=filt, limit=100), ref.search(p, filter=filt, limit=100))


def test_limit_and_offset_page_through_everything_once(stores):
    ref, ours, run = stores
    everything = ours.search((run,), limit=100)
    assert len(everything) == len(ITEMS)
    # most recently updated first
    assert [i.updated_at for i in everything] == sorted((i.updated_at for i in everything), reverse=True)
    pages = [ours.search((run,), limit=2, offset=o) for o in (0, 2, 4, 6)]
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    assert _plain([i for p in pages for i in p]) == _plain(everything)
    assert len(ref.search((run,), limit=2, offset=4)) == 1


@pytest.mark.parametrize("conds,depth,limit,offset", [
    ((), None, 100, 0), ((MatchCondition("prefix", ("memories",)),), None, 100, 0),
    ((MatchCondition("suffix", ("profile",)),), None, 100, 0), ((MatchCondition("prefix", ("*", "bob")),), None, 100, 0),
    ((MatchCondition("prefix", ("memories",)), MatchCondition("suffix", ("alice",))), None, 100, 0),
    ((), 2, 100, 0), ((), 1, 100, 0), ((), None, 2, 1), ((MatchCondition("prefix", ("nope",)),), None, 100, 0),
])
def test_list_namespaces_matches_the_reference(stores, conds, depth, limit, offset):
    ref, ours, run = stores
    conds = tuple(MatchCondition(c.match_type, (run, *c.path) if c.match_type == "prefix" else c.path) for c in conds)
    conds = conds + (MatchCondition("prefix", (run,)),)        # this test's items only (the home is shared)
    op = ListNamespacesOp(match_conditions=conds, max_depth=None if depth is None else depth + 1, limit=limit, offset=offset)
    assert ours.batch([op]) == ref.batch([op])


def test_batch_runs_mixed_ops_in_order(stores):
    ref, ours, run = stores
    ns = (run, "memories", "carol")
    ops = [PutOp(ns, "a", {"content": "Carol plays the cello."}), GetOp(ns, "a"),
           SearchOp((run, "memories"), filter={"kind": "pref"}, limit=10), ListNamespacesOp(match_conditions=(
               MatchCondition("prefix", (run, "memories")),), max_depth=3), PutOp(ns, "a", None), GetOp(ns, "a")]
    put, got, found, spaces, deleted, gone = ours.batch(ops)
    assert put is None and deleted is None and gone is None
    assert got.value == {"content": "Carol plays the cello."}
    assert {i.key for i in found} == {"tea"} and len(found) == 2
    assert ns in spaces


# -- what this store adds ---------------------------------------------------------------
def test_semantic_search_ranks_and_never_crosses_a_namespace(home, stores):
    _, ours, run = stores
    hits = ours.search((run, "memories"), query="What does Alice like to drink in the morning?", limit=3)
    assert hits[0].key == "tea" and tuple(hits[0].namespace) == (run, "memories", "alice")
    assert hits[0].score is not None and hits[0].score >= hits[-1].score
    only_bob = ours.search((run, "memories", "bob"), query="What does Alice drink?")
    assert {tuple(i.namespace) for i in only_bob} == {(run, "memories", "bob")}
    filtered = ours.search((run,), query="tea", filter={"kind": "fact"})
    assert filtered and all(i.value["kind"] == "fact" for i in filtered)
    # the episode store's own recall: one LangGraph namespace, never another, never the default one
    eps = home.recall("tea", 10, namespace=episode_namespace((run, "memories", "alice")))
    assert {e.provenance["langgraph_key"] for e in eps} == {"tea", "job"}
    assert not [e for e in home.recall("Alice tea coffee", 10) if e.provenance.get("via") == "langgraph.store"]
    # tuples that a "/" join would confuse stay apart
    assert episode_namespace(("a/b", "c")) != episode_namespace(("a", "b/c"))


def test_items_are_episodes_the_sleep_takes(home, stores):
    _, ours, run = stores
    ns = (run, "memories", "alice")
    waiting = {e.id: e for e in home.episodes(unconsolidated_only=True, namespace=episode_namespace(ns))}
    assert {e.provenance["langgraph_key"] for e in waiting.values()} == {"tea", "job"}
    e = next(iter(waiting.values()))
    assert e.provenance["via"] == "langgraph.store" and json.loads(e.provenance["langgraph_namespace"]) == list(ns)
    assert e.source == "langgraph" and e.kind == "fact"
    plan = home.sleep(dry_run=True, max_episodes=10_000)
    assert set(waiting) <= {x["id"] if isinstance(x, dict) else x for x in plan.episodes}


def test_replacing_and_deleting_forget_the_episode(home, stores):
    _, ours, run = stores
    ns = (run, "memories", "dave")
    count = home.store.count()
    ours.put(ns, "a", {"content": "Dave's locker code is 4417."})
    ours.put(ns, "b", {"content": "Dave's locker code is 4417."})        # equal text: one shared episode
    assert home.store.count() == count + 1
    ours.delete(ns, "a")
    assert ours.get(ns, "b").value["content"] == "Dave's locker code is 4417." and home.store.count() == count + 1
    ours.put(ns, "b", {"content": "Dave's locker code is now 9021."})
    texts = [e.text for e in home.episodes(namespace=episode_namespace(ns))]
    assert texts == ["Dave's locker code is now 9021."]
    # forgotten by other means: the item goes too
    eid = home.episodes(namespace=episode_namespace(ns))[0].id
    home.forget(eid)
    assert ours.get(ns, "b") is None and ours.search(ns) == []
    assert home.store.count() == count


def test_bad_input_is_refused_in_one_line_and_changes_nothing(home, stores):
    _, ours, run = stores
    ns = (run, "memories", "alice")
    count, before = home.store.count(), ours.get(ns, "tea").value
    bad = [
        (lambda: ours.put(ns, "tea", {"content": {1, 2}}), InputError, "not JSON-serialisable"),
        (lambda: ours.put(ns, "tea", ["not", "a", "dict"]), InputError, "value must be a dict"),
        (lambda: ours.put((run, "mem.ories"), "k", {"content": "x"}), InvalidNamespaceError, "'.'"),
        (lambda: ours.put(("langgraph", "x"), "k", {"content": "x"}), InvalidNamespaceError, "langgraph"),
        (lambda: ours.put((run, ""), "k", {"content": "x"}), InvalidNamespaceError, "empty"),
        (lambda: ours.put(ns, "", {"content": "x"}), InputError, "key must be a non-empty string"),
        (lambda: ours.put((run, "x" * 300), "k", {"content": "x"}), InputError, "over the limit"),
        (lambda: ours.put(ns, "tea", {"content": "x"}, ttl=5), NotImplementedError, "TTL is not supported"),
        (lambda: ours.put((run, "x" * 300), "k", {"content": "x"}), InputError, "encoded namespace is"),
        (lambda: ours.search(ns, limit=-1), InputError, "limit must be a non-negative integer"),
        (lambda: ours.search(ns, filter={"n": {"$near": 1}}), InputError, "unknown filter operator"),
        (lambda: ours.batch([PutOp(ns, "ok", {"content": "fine"}), PutOp(ns, "tea", {"content": object()})]),
         InputError, "not JSON-serialisable"),
        (lambda: ours.batch([PutOp(ns, "ok", {"content": "fine"}),
                             PutOp(ns, "tea", {"content": "x" * (home.config.memory.max_text_chars + 1)})]),
         InputError, "over memory.max_text_chars"),
        (lambda: AgentSleepStore(home, kind="dream"), InputError, "kind must be one of"),
        (lambda: AgentSleepStore(home, trust="maybe"), InputError, "trust must be"),
    ]
    for call, exc, words in bad:
        with pytest.raises(exc, match=None) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
        assert isinstance(info.value, ValueError) or exc is NotImplementedError  # as LangGraph's stores raise
    assert home.store.count() == count and ours.get(ns, "tea").value == before and ours.get(ns, "ok") is None


def test_a_running_sleep_blocks_forgetting_and_loses_nothing(home, fresh):
    from agentsleep.sleep.lock import sleep_lock

    _, ours, run = fresh
    ns = (run, "memories", "alice")
    count = home.store.count()
    with sleep_lock(home.root, what="sleep"):
        with pytest.raises(SleepLockedError, match="busy"):
            ours.delete(ns, "tea")
        with pytest.raises(SleepLockedError, match="busy"):
            ours.put(ns, "tea", {"content": "Alice gave up tea."})
        ours.put(ns, "new", {"content": "Alice started learning the cello."})   # adding never waits
    assert ours.get(ns, "tea").value["content"].startswith("Alice drinks jasmine")
    assert home.store.count() == count + 1
    ours.delete(ns, "tea")
    assert ours.get(ns, "tea") is None


def test_async_api(stores):
    _, ours, run = stores
    ns = (run, "memories", "erin")

    async def go():
        await ours.aput(ns, "k", {"content": "Erin is allergic to peanuts."})
        assert (await ours.aget(ns, "k")).value["content"] == "Erin is allergic to peanuts."
        hits = await ours.asearch(ns, query="food allergy")
        assert [h.key for h in hits] == ["k"]
        assert ns in await ours.alist_namespaces(prefix=(run, "memories"))
        await ours.adelete(ns, "k")
        assert await ours.aget(ns, "k") is None

    asyncio.run(go())


def test_text_of_picks_what_is_remembered():
    assert text_of({"content": "plain"}) == "plain"
    assert text_of({"content": {"content": "inner", "x": 1}}) == "inner"
    assert text_of({"title": "T", "body": "B"}, ["body"]) == "B"
    assert json.loads(text_of({"a": 1})) == {"a": 1}


# -- a real agent: create_react_agent with LangMem's memory tools ---------------------------
@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_react_agent_with_langmem_tools(home):
    pytest.importorskip("langmem")
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langgraph.prebuilt import create_react_agent
    from langmem import create_manage_memory_tool, create_search_memory_tool

    class Scripted(BaseChatModel):
        """'Remember: X' -> manage_memory(X); 'Recall: Q' -> search_memory(Q); a tool result -> repeats it."""

        @property
        def _llm_type(self) -> str:
            return "scripted"

        def bind_tools(self, tools: Any, **kw: Any) -> "Scripted":
            return self

        def _generate(self, messages, stop=None, run_manager=None, **kw):  # noqa: ANN001
            last = messages[-1]
            if isinstance(last, HumanMessage):
                verb, _, arg = last.content.partition(": ")
                name, args = ("manage_memory", {"content": arg}) if verb == "Remember" else ("search_memory", {"query": arg})
                ai = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": "c-" + uuid.uuid4().hex[:6]}])
            else:
                ai = AIMessage(content=f"Done: {last.content}" if isinstance(last, ToolMessage) else "ok")
            return ChatResult(generations=[ChatGeneration(message=ai)])

    store = AgentSleepStore(home)
    user = "u-" + uuid.uuid4().hex[:6]
    ns = ("memories", "{langgraph_user_id}")
    agent = create_react_agent(Scripted(), [create_manage_memory_tool(namespace=ns), create_search_memory_tool(namespace=ns)],
                               store=store)
    cfg = {"configurable": {"langgraph_user_id": user}}
    agent.invoke({"messages": [("user", "Remember: My cat Pixel is afraid of thunderstorms.")]}, cfg)
    [item] = store.search(("memories", user))
    assert item.value == {"content": "My cat Pixel is afraid of thunderstorms."}
    [ep] = home.episodes(namespace=episode_namespace(("memories", user)))
    assert ep.text == "My cat Pixel is afraid of thunderstorms." and ep.provenance["langgraph_key"] == item.key
    out = asyncio.run(agent.ainvoke({"messages": [("user", "Recall: what scares my pet?")]}, cfg))
    assert "Pixel is afraid of thunderstorms" in out["messages"][-1].content
    other = agent.invoke({"messages": [("user", "Recall: what scares my pet?")]},
                         {"configurable": {"langgraph_user_id": user + "-other"}})
    assert "Pixel" not in other["messages"][-1].content                 # another user's namespace: nothing


def test_a_replacement_whose_forget_was_cut_short_keeps_the_new_value(home, fresh):
    """The old episode's forget is recorded before Chroma fails to delete it (the next open finishes it):
    the item must take its new value, not point at a forgotten episode and lose both."""
    _, ours, run = fresh
    ns = (run, "memories", "erin")
    ours.put(ns, "code", {"content": "Erin's gate code is 1187."})
    old = ours.get(ns, "code")
    real = home.store._coll.delete
    home.store._coll.delete = lambda **kw: (_ for _ in ()).throw(ConnectionError("chroma went away"))
    try:
        ours.put(ns, "code", {"content": "Erin's gate code is now 5530."})
    finally:
        home.store._coll.delete = real
    assert old is not None and ours.get(ns, "code").value["content"] == "Erin's gate code is now 5530."
    assert [e.text for e in home.recall("Erin's gate code", 5, namespace=episode_namespace(ns))] == \
        ["Erin's gate code is now 5530."]


def test_query_search_keeps_short_items_beside_long_ones_and_returns_unindexed_items(home, fresh):
    """A long value is stored as several chunks: the recall behind a query search must not spend the limit
    on them. Items put with index=False are still returned by a query search, after the scored ones and
    without a score, as InMemoryStore does. Values come back with their keys in the order put."""
    _, ours, run = fresh
    ns = (run, "notes")
    long = {"content": "The garden shed holds the lawnmower, rakes and seed trays. " * 60}
    ours.put(ns, "long", long)
    ours.put(ns, "short", {"content": "The spare garden key hangs by the shed door."})
    ours.put(ns, "hidden", {"z": 1, "content": "Unindexed note about the garden.", "a": 2}, index=False)
    assert len([e for e in home.episodes(namespace=episode_namespace(ns))]) > 5  # the long one is chunked
    hits = ours.search(ns, query="garden shed", limit=10)
    assert [h.key for h in hits][:2] in (["long", "short"], ["short", "long"]) and hits[2].key == "hidden"
    assert hits[2].score is None and all(h.score is not None for h in hits[:2])
    assert list(ours.get(ns, "hidden").value) == ["z", "content", "a"]
