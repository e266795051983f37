"""Implications (SEAL-style self-edits) for long memories: parsed, filtered, trained as text, journaled."""
import json

import pytest

from agentsleep.config import DreamConfig
from agentsleep.models.loader import load
from agentsleep.sleep import implications as imp
from agentsleep.sleep.journal import Journal
from agentsleep.sleep.seed import build_items
from agentsleep.sleep.types import Dream, Memory
from tiny import tiny_model_dir

PASSAGE = ("The Orla Bridge crosses the Vell river at Marsden. It opened in 1931 and carried trams until 1958, "
           "when the tram line closed. Since 2004 only pedestrians and bicycles may use it, and a ferry runs "
           "beside it in summer.")


def test_statements_are_read_from_a_bulleted_or_numbered_list():
    done = "The bridge opened in 1931\n- Trams crossed it until 1958.\n2. Only walkers use it now\n\n* Ferries run in summer."
    assert imp.statements(done) == ["The bridge opened in 1931.", "Trams crossed it until 1958.",
                                    "Only walkers use it now.", "Ferries run in summer."]
    assert imp.statements("") == []


def test_usable_keeps_grounded_new_wordings_and_drops_copies_inventions_and_repeats():
    cfg = DreamConfig(implications=3)
    lines = ["It opened in 1931 and carried trams until 1958, when the tram line closed.",  # a copy of a sentence
             "The Orla Bridge opened in 1932.",                       # a number the passage does not hold
             "Karl Vell built the Orla Bridge at Marsden.",           # an invented name, first in its sentence
             "Trams.",                                               # too short to say anything
             "Trams crossed the Orla Bridge from 1931 to 1958.",
             "Trams crossed the Orla Bridge from 1931 until 1958.",  # the same statement again
             "Since 2004 cars may not use the Orla Bridge.",
             "In summer a ferry runs beside the Orla Bridge.",
             "The Orla Bridge is at Marsden on the Vell river."]      # over the cap of 3
    assert imp.usable(lines, PASSAGE, cfg) == ["Trams crossed the Orla Bridge from 1931 to 1958.",
                                               "Since 2004 cars may not use the Orla Bridge.",
                                               "In summer a ferry runs beside the Orla Bridge."]


def test_the_prompt_shows_one_worked_list_and_prefills_a_bullet():
    from transformers import AutoTokenizer

    from agentsleep.models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=lambda m: None)))
    p = imp.prompt(tok, PASSAGE)
    assert p.endswith("-") and "Lake Morrow" in p and PASSAGE in p and p.count("Passage:") == 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


def test_only_new_long_memories_are_asked(tiny, monkeypatch):
    model, tok = load(str(tiny))
    asked = []
    real = imp.gen.generate

    def spy(model, tok, prompts, **kw):
        asked.extend(prompts)
        return real(model, tok, prompts, **kw)

    monkeypatch.setattr(imp.gen, "generate", spy)
    mems = [Memory("short", "The user's dog is called Biscuit."), Memory("long", PASSAGE),
            Memory("old", PASSAGE.replace("Orla", "Brede"), replay=True)]
    kept, written = imp.implications(model, tok, mems, DreamConfig(implication_min_chars=120, implications=2))
    assert len(asked) == 1 and "Orla Bridge" in asked[0] and "Brede" not in asked[0]
    assert all(eid == "long" for eid, _ in kept) and len(kept) <= 2 and written >= len(kept)
    asked.clear()
    assert imp.implications(model, tok, mems, DreamConfig(implications=0)) == ([], 0) and not asked


def test_implications_are_trained_as_text_and_journaled(tmp_path, tiny):
    _, tok = load(str(tiny))
    mems = [Memory("long", PASSAGE)]
    notes = [("long", "Trams crossed the Orla Bridge from 1931 to 1958.")]
    items = build_items(tok, [Dream("long", "When did the Orla Bridge open?", "1931")], mems, True, notes=notes)
    as_text = [(i.prompt, i.target) for i in items if i.prompt == ""]
    assert as_text == [("", mems[0].view), ("", notes[0][1])]  # the memory and its implication, no question
    j = Journal(tmp_path, "s1", "v0000")
    j.write_dreams([Dream("long", "When did the Orla Bridge open?", "1931")], notes)
    rows = [json.loads(x) for x in (j.dir / "implications.jsonl").read_text().splitlines()]
    assert rows == [{"episode_id": "long", "text": notes[0][1]}]
