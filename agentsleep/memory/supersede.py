"""Updated facts: a newer episode that states a new value for what an earlier one said supersedes it.

Detected when a sleep starts, over the episodes it is about to consolidate, not at `remember`: the
awake path stays one embedding and one write (bulk imports of 100k episodes pay nothing), and the
check runs once per episode, against what is consolidated by then. Candidates are earlier
episodes, consolidated or waiting for the same sleep, of the same namespace, source and speaker whose stored vectors are close
(cosine >= SIMILARITY); a candidate is superseded when the two texts are about the same holder
(both "I/we", or the old one's "my/our X" named in the new one) and the new one says something the
old did not while the old value is gone from it or said to have changed ("left", "now", "moved"),
not when the new one only adds detail; or when the new one says it went from the old value to another
("I moved my savings from Carrow to Westfield" after "I bank with Carrow"); never when the change is
denied ("I never moved my savings from Carrow", "I didn't switch banks": every verb of changing
negated). The rule is lexical and generic; its precision on written pairs is measured in
tests/test_supersede.py.

A superseded episode stays in the store and in recall (marked with the id that superseded it); it
leaves rehearsal, and one that was never consolidated is held back from consolidation (the policy's
"superseded" reason), so that a night never trains both values. Records live in the ledger's SQLite file; forgetting either episode drops them.
"""
from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from .ledger import SKIPPED, connect

SIMILARITY = 0.55  # cosine of MiniLM vectors; tuned on the pairs in tests/test_supersede.py
CANDIDATES = 5     # nearest earlier episodes looked at per new one

_SCHEMA = """
CREATE TABLE IF NOT EXISTS superseded (
    episode_id TEXT PRIMARY KEY,
    by         TEXT NOT NULL,
    similarity REAL NOT NULL,
    at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS superseded_by ON superseded(by);
"""
_STOP = set("""a an the is are was were be been being am i we me us my our mine ours you your he she it they them his her
its their to of in on at for with by from and or but so as that this these those there here now then still no not
do does did have has had will would can could just also very really too into about over after before since than
named called""".split())
_CUES = {"now", "these", "days", "no", "longer", "anymore", "moved", "switched", "changed", "new", "instead"}
_CHANGE = re.compile(r"\b(?:now|no longer|anymore|instead|moved|switched|changed|left|sold|quit|replaced|retired|stopped|"
                     r"gave up|cancelled|canceled|new)\b", re.I)
_POSS = re.compile(r"\b(?:my|our)\s+([\w'-]+)(?:\s+([\w'-]+))?", re.I)
_SELF = re.compile(r"\b(?:i|we|i'm|we're|i've|we've)\b", re.I)
# "moved my savings from X to Y", "moved to Y from X": a verb of changing, then the old value after "from"
# ("drove from X to Y" is a trip)
_FROM_TO = re.compile(r"\b(?:moved|switched|changed|transferred|swapped|migrated|upgraded|downgraded)\b[^.;!?]*?"
                      r"\bfrom\s+(?:(?:the|my|our|a|an)\s+)?([\w'-]+(?:\s+(?!to\b)[\w'-]+){0,3})"
                      r"(?:\s+to\s+(?:(?:the|my|our|a|an)\s+)?([\w'-]+(?:\s+[\w'-]+){0,3}))?", re.I)
# "I never moved my savings from X", "I didn't switch banks", "we're not moving": a change denied when every
# verb of changing in the text is negated right before it ("We moved to Lisbon and I'll never leave" is a move)
_CHANGE_VERB = re.compile(r"\b(?:mov(?:e|ed|es|ing)|switch(?:ed|es|ing)?|chang(?:e|ed|es|ing)|transferr?(?:ed|ing)?|"
                          r"swapp?(?:ed|ing)?|left|leav(?:e|es|ing)|sold|sell(?:s|ing)?|quit(?:s|ting)?|replac(?:e|ed|ing)|"
                          r"stopp?(?:ed|ing)?|cancell?(?:ed|ing)?|canceled)\b", re.I)
_NEGATED = re.compile(r"\b(?:never|not|\w+n['\u2019]t)\s+(?:(?:ever|yet|really|actually|even)\s+)?$", re.I)


def _denied(text: str) -> bool:
    verbs = list(_CHANGE_VERB.finditer(text))
    return bool(verbs) and all(_NEGATED.search(text[max(0, v.start() - 40):v.start()]) for v in verbs)


_NOT_SELF = re.compile(r"\b(?:he|she|they|his|her|their|my|our|never|not|didn't|don't|won't|haven't)\b|n't\b", re.I)


def moved_from(text: str, *, own: bool = False) -> list[str]:
    """The words a text names as left, after a verb of changing, less those it names as taken ("I moved
    my savings from Carrow to Westfield" -> ["Carrow"], "moved from level 3 to level 5" -> ["3"]). `own`:
    only where the clause before the verb is the speaker's own ("I", "we") and neither negated nor someone
    else's ("My sister moved from ..."), and the sentence is no question."""
    out = []
    for m in _FROM_TO.finditer(text):
        start = max((b.end() for b in re.finditer(r"[.;!?,]", text[:m.start()])), default=0)
        said = text[start:m.start()]
        end = re.search(r"[.;!?]", text[m.end():])
        if own and (not _SELF.search(said) or _NOT_SELF.search(said) or (end and end.group(0) == "?")):
            continue
        taken = {w.lower() for w in (m.group(2) or "").split()}
        out += [w for w in m.group(1).split() if w.lower() not in taken]
    return out


_READY: set[Path] = set()


def _ensure(path: Path) -> None:
    if path in _READY:
        return
    with connect(path) as c:
        c.executescript(_SCHEMA)
    _READY.add(path)


def _stem(w: str) -> str:
    return w.lower().strip("'")[:5]


def _content(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[\w'-]+", text) if w.lower() not in _STOP and w.lower() not in _CUES}


def _holders(text: str) -> set[str]:
    """Whom a text is about: "self" for I/we, and the nouns after my/our ("my yoga class" -> yoga, class)."""
    out = {"self"} if _SELF.search(text) else set()
    for m in _POSS.finditer(text):
        out |= {_stem(w) for w in m.groups() if w and w.lower() not in _STOP and w.lower() not in _CUES}
    return out


def contradicts(old: str, new: str, similarity: float) -> bool:
    """Whether `new` states another value for what `old` said (see the module docstring)."""
    if similarity < SIMILARITY:
        return False
    new = " ".join(x for x in re.findall(r"[^.!?]+[.!?]*", new) if not x.strip().endswith("?"))
    if not new.strip():
        return False  # only questions: "Should I move my savings?" states no value
    c_old, c_new = _content(old), _content(new)
    if any(_stem(w) in c_old for w in moved_from(new, own=True)):
        return True  # "I bank with X" -> "I moved my savings from X to Y": the old value named as left
    if _denied(new):
        return False  # "I never moved my savings from X": the old value stands
    h_old, h_new = _holders(old), _holders(new)
    named = h_old - {"self"}
    if named:
        if not named <= c_new:
            return False
    elif "self" not in h_old or "self" not in h_new or (h_new - {"self"} - c_old):
        return False  # "I live in X" is not replaced by "my sister lives in Y"
    # a new value, and the old one gone from the text or said to have changed ("Ana left; my boss is Raj now")
    return bool(c_new - c_old) and (bool(c_old - c_new) or bool(_CHANGE.search(new)))


def record(path: Path, old_id: str, new_id: str, similarity: float) -> None:
    _ensure(path)
    with connect(path) as c:
        c.execute("INSERT OR REPLACE INTO superseded VALUES (?,?,?,?)", (old_id, new_id, float(similarity), time.time()))


def superseded(path: Path, episode_ids: list[str] | None = None) -> dict[str, str]:
    """old episode id -> the id of the episode that superseded it (none in a ledger that never had one:
    readers of a read-only home never create the table)."""
    try:
        with connect(path) as c:
            rows = c.execute("SELECT episode_id, by FROM superseded").fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" not in str(e):
            raise
        return {}
    want = None if episode_ids is None else set(episode_ids)
    return {o: n for o, n in rows if want is None or o in want}


def superseding(path: Path, new_ids: list[str]) -> dict[str, list[str]]:
    """new episode id -> the ids it superseded (for the sleep that consolidates it)."""
    want, out = set(new_ids), {}
    for o, n in superseded(path).items():
        if n in want:
            out.setdefault(n, []).append(o)
    return out


def drop(path: Path, episode_ids: list[str]) -> None:
    """Forget: records naming a forgotten episode on either side go (an old one superseded only by a
    forgotten one is current again, and rehearsed again)."""
    _ensure(path)
    ids = list(episode_ids)
    with connect(path) as c:
        for s in range(0, len(ids), 400):
            part = ids[s:s + 400]
            marks = ",".join("?" * len(part))
            c.execute(f"DELETE FROM superseded WHERE episode_id IN ({marks}) OR by IN ({marks})", part + part)


def detect(store, episodes: list) -> list[tuple[str, str, float]]:
    """Find and record what `episodes` (new, unconsolidated) supersede: [(old id, new id, cosine)]."""
    if not episodes:
        return []
    path = store.ledger.path
    done = superseded(path)
    waiting = {e.id for e in episodes}
    found = []
    for ep in episodes:
        for old, sim in store.similar(ep.id, CANDIDATES, namespace=ep.namespace):
            if old.id == ep.id or old.id in done or old.created_at >= ep.created_at or old.parent_id or ep.parent_id:
                continue
            if (old.source, old.speaker) != (ep.source, ep.speaker):
                continue
            if old.id not in waiting and (not old.consolidated_in or old.consolidated_in.startswith(SKIPPED)):
                continue  # an earlier value is either consolidated or told before this same sleep
            if contradicts(old.text, ep.text, sim):
                record(path, old.id, ep.id, sim)
                done[old.id] = ep.id
                found.append((old.id, ep.id, round(sim, 3)))
    return found
