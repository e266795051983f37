"""Forgetting is exact even when it is cut short: the forgetting is recorded before anything is deleted,
and what a crash or a store error left behind is finished on the next writable open."""
from __future__ import annotations

import pytest

from agentsleep.config import Config
from agentsleep.home import Home
from agentsleep.sleep.writer import pending_writer_dir, writer_adapter_dir
from tiny import tiny_model_dir


@pytest.fixture()
def root(tmp_path):
    cfg = Config.model_validate({"model": {"base": str(tiny_model_dir(tmp_path / "models"))}})
    Home.init(tmp_path / "home", config=cfg)
    return tmp_path / "home"


def test_a_forget_cut_short_by_the_store_is_finished_on_the_next_open(root):
    with Home.open(root) as h:
        keep = h.remember("The spare key is under the blue flowerpot.").id
        gone = h.remember("Zephyrine's locker code is 4471.").id
        real = h.store._coll.delete

        def down(**kw):
            raise ConnectionError("chroma went away")
        h.store._coll.delete = down
        with pytest.raises(Exception):
            h.forget(gone)
        h.store._coll.delete = real
        assert gone in h.store.ledger.forgotten()           # recorded before the delete was tried
        assert [e.id for e in h.store.list()] == [keep]      # and hidden from the sleep at once
        assert [i for i, _ in h.store.lexical.search("Zephyrine 4471", 5, _all())] == []
        assert h.store._coll.get(ids=[gone])["ids"] == [gone]  # Chroma still held it
    with Home.open(root) as h:                               # the next writable open finishes the job
        assert h.store._coll.get(ids=[gone])["ids"] == []
        assert h.store.count() == 1 and gone not in [e.id for e in h.recall("What is the locker code?", 5)]


def _cut_short(h, episode_id):
    """Forget with Chroma failing on the delete: the record is made, the delete is not."""
    real = h.store._coll.delete
    h.store._coll.delete = lambda **kw: (_ for _ in ()).throw(ConnectionError("chroma went away"))
    try:
        with pytest.raises(Exception):
            h.forget(episode_id)
    finally:
        h.store._coll.delete = real


def test_a_forget_cut_short_hides_the_episode_at_once_and_never_swallows_it_again(root):
    with Home.open(root) as h:
        gone = h.remember("Zephyrine's locker code is 4471.").id
        _cut_short(h, gone)
        with pytest.raises(Exception, match="no episode"):
            h.get(gone)
        assert gone not in [e.id for e in h.recall("Zephyrine's locker code", 5)]
        again = h.remember("Zephyrine's locker code is 4471.")    # told again: a new memory, not the forgotten one
        assert not again.duplicate and again.id != gone and h.get(again.id).text.startswith("Zephyrine")
    with Home.open(root, writable=False) as r:                  # a reader hides it too
        assert gone not in [e.id for e in r.recall("Zephyrine's locker code", 5)]
        with pytest.raises(Exception):
            r.forget(again.id)                                  # read-only: refused before anything changes
    with Home.open(root) as h:
        assert h.store.ledger.pending_forgets() == [] and [e.id for e in h.store.list()] == [again.id]


def test_a_forget_cut_before_its_rebuild_plan_is_planned_on_the_next_open(root, monkeypatch):
    """A crash after the record and before the rebuild plan must not leave a serving version holding a
    forgotten episode with nothing scheduled to rebuild it."""
    planned = []
    with Home.open(root) as h:
        gone = h.remember("Zephyrine's locker code is 4471.").id
        monkeypatch.setattr(Home, "_plan_rebuild", lambda self, ids, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            h.forget(gone)
        monkeypatch.setattr(Home, "_plan_rebuild", lambda self, ids, **kw: planned.append(list(ids)) or set())
    with Home.open(root) as h:
        assert h.store.count() == 0                             # the stores finished the delete
    assert planned == [[gone]]                                  # and the rebuild was planned for it
    with Home.open(root) as h:
        h.store.count()
    assert planned == [[gone]]                                  # once


def test_a_forget_with_fallback_cut_short_is_finished_with_its_fallback(root, monkeypatch):
    """`forget --fallback` asks to serve the clean version at once: a crash before the plan must not turn it
    into a plain forget that keeps serving the versions holding the episode until the rebuild."""
    asked = []
    with Home.open(root) as h:
        gone = h.remember("Zephyrine's locker code is 4471.").id
        monkeypatch.setattr(Home, "_plan_rebuild", lambda self, ids, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            h.forget(gone, fallback=True)
        plain = h.remember("The spare key is under the blue flowerpot.").id
        with pytest.raises(KeyboardInterrupt):
            h.forget(plain)                                 # another forget, cut short too, asked no fallback
        assert h.store.ledger.pending_fallbacks() == {gone}
        monkeypatch.setattr(Home, "_plan_rebuild", lambda self, ids, **kw: asked.append((list(ids), kw)) or set())
    with Home.open(root) as h:
        h.store.count()
        assert sorted(asked, key=lambda a: a[1]["fallback"]) == [([plain], {"fallback": False}),
                                                                 ([gone], {"fallback": True})]  # each as asked
        assert h.store.ledger.pending_fallbacks() == set()  # done: the wishes go with them
        other = h.remember("The bike lock code is 2231.").id
        h.forget(other)                                     # a later plain forget is not served a fallback
    assert asked[-1] == ([other], {"fallback": False})


def test_forgetting_drops_the_learned_dream_writer(root):
    """The dream writer is fitted on dreams of the notes: kept, it could write a forgotten note back."""
    for d in (writer_adapter_dir(root), pending_writer_dir(root)):
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
    with Home.open(root) as h:
        _cut_short(h, h.remember("Zephyrine's locker code is 4471.").id)  # even when the delete fails
    assert not writer_adapter_dir(root).exists() and not pending_writer_dir(root).exists()


def _all():
    from agentsleep.memory.lexical import Filters
    return Filters(namespace="default")
