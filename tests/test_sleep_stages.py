"""Sleep stages one by one on a tiny random model (fast), plus the pipeline's guard rails."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agentsleep.config import Config, DreamConfig, GateConfig, SeedConfig
from agentsleep.errors import InputError, SleepLockedError
from agentsleep.home import Home
from agentsleep.models.loader import load
from agentsleep.models.registry import Registry
from agentsleep.sleep import dream as dream_mod
from agentsleep.sleep import spans as spans_mod
from agentsleep.sleep.gate import evaluate
from agentsleep.sleep.lock import sleep_lock
from agentsleep.sleep.publish import publish
from agentsleep.sleep.objective import imitate_reward
from agentsleep.sleep.seed import seed
from agentsleep.sleep.probes import checked, cloze
from agentsleep.sleep.types import Dream, Memory, Probe
from agentsleep.sleep.voice import user_question, user_view
from agentsleep.textmatch import contains_answer, grounded, trivial
from tiny import tiny_model_dir

MEM = [Memory("e1", "The user's dog is a beagle called Biscuit."),
       Memory("e2", "Project Falcon launches on 14 February 2027.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


def test_parse_dream_output():
    assert dream_mod.parse("What", " is the dog's name?\nA: Biscuit.") == ("What is the dog's name?", "Biscuit")
    assert dream_mod.parse("Who", "'s the manager?\n\nA: Ingrid") == ("Who's the manager?", "Ingrid")
    assert dream_mod.parse("When", " launches") is None
    assert dream_mod.parse("How", " long?\nA: " + "x" * 200) is None


def test_questions_are_written_in_the_users_voice():
    uq = user_question
    assert uq("What is the user's favourite tea?") == "What is my favourite tea?"
    assert uq("Which instrument does the user play?") == "Which instrument do I play?"
    assert uq("What is the user allergic to?") == "What am I allergic to?"
    assert uq("What is your manager called?") == "What is my manager called?"
    assert uq("Are you allergic to nuts?") == "Am I allergic to nuts?"
    assert uq("Who told you about it?") == "Who told me about it?"
    assert uq("Who is the dog?") == "Who is the dog?"


def test_trained_dreams_are_asked_in_both_voices_and_probes_in_one():
    d = [Dream("e1", "What is the name of the user's daughter?", "Maya", value=2.0),
         Dream("e1", "What is your manager called?", "Ingrid"),
         Dream("e2", "Where is Project Heron hosted?", "Oslo"),
         Dream("e1", "Which tea does the user like?", "jasmine", held_out=True)]
    out = dream_mod.in_both_voices(d)
    qs = [(x.question, x.kind, x.held_out) for x in out]
    assert qs == [("What is the name of the user's daughter?", "qa", False),
                  ("What is the name of my daughter?", "voice", False),   # the user's own words, same answer
                  ("What is my manager called?", "qa", False),            # asked back to the user: one voice
                  ("Where is Project Heron hosted?", "qa", False),        # nobody's voice to change
                  ("Which tea does the user like?", "qa", True)]          # a probe is asked once
    assert out[1].answer == "Maya" and out[1].value == 2.0 and out[1].episode_id == "e1"


def test_memories_are_read_from_the_users_side_whoever_said_them():
    assert user_view("Noted: your flight to Lima leaves at 9:40.", "assistant") == "Noted: my flight to Lima leaves at 9:40."
    assert user_view("I've booked your table, you are all set.", "assistant") == "You've booked my table, I am all set."
    assert user_view("I'll remind you on Friday.", "assistant") == "You'll remind me on Friday."
    assert user_view("My manager is Ana.", "user") == "My manager is Ana."  # the user's own words stay
    assert user_view("The user prefers window seats.") == "I prefer window seats."
    assert user_view("The tax filing deadline for the user is in April.") == "The tax filing deadline for me is in April."
    assert user_view("Ana is taller than the user is.") == "Ana is taller than I am."
    assert user_view("Ana wrote to the user's sister.") == "Ana wrote to my sister."   # "the user's" is still "my"
    assert user_view("The user's dog is Biscuit.", "tool:crm") == "My dog is Biscuit."
    assert user_view("Ana leads procurement.", "assistant") == "Ana leads procurement."  # nobody to swap
    assert Memory("e", "Your gate code is 5519.", speaker="assistant").view == "The user's gate code is 5519."
    assert Memory("e", "I take the 7:15 ferry.").view == "The user takes the 7:15 ferry."  # a note about the user


def test_conversation_turns_become_speaker_resolved_dated_notes(tmp_path):
    """A named speaker's "I" is that person, and a date the caller gave heads the note (LoCoMo-style
    sessions); a memory remembered now carries no date, so facts are not dreamed as events."""
    from datetime import datetime, timezone

    from agentsleep.memory.episode import Episode
    from agentsleep.sleep.select import memory
    from agentsleep.sleep.voice import about_the_user, note

    assert about_the_user("I cannot eat gluten.") == "The user cannot eat gluten."   # a modal takes no -s
    assert about_the_user("I take the 7:15 bus and I usually carry my umbrella.") == \
        "The user takes the 7:15 bus and the user usually carries the user's umbrella."
    assert about_the_user("I went to my sister's party; I'm tired.", who="Caroline") == \
        "Caroline went to Caroline's sister's party; Caroline is tired."
    assert note("Caroline: I went to a support group yesterday.", "user", who="Caroline", when="8 May 2023") == \
        "On 8 May 2023, Caroline went to a support group yesterday."
    said = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
    now = datetime.now(timezone.utc)
    turn = Episode(id="t1", text="I painted a lake.", kind="turn", source="user", speaker="Melanie", event_time=said,
                   created_at=now)
    m = memory(turn)
    assert (m.who, m.when) == ("Melanie", "8 May 2023") and m.view == "On 8 May 2023, Melanie painted a lake."
    fact = Episode(id="f1", text="Noted: your dog is Biscuit.", source="assistant", event_time=now, created_at=now)
    assert memory(fact).when is None and memory(fact).view == "Noted: the user's dog is Biscuit."


def test_quotations_keep_their_speakers_own_words():
    """A passage quoting someone ("for us as a league") is not about the user: words inside double
    quotes are not swapped, the words around them are."""
    from agentsleep.sleep.voice import note

    assert note('The commissioner said "for us as a league, this is our moment" and I agreed.') == \
        'The commissioner said "for us as a league, this is our moment" and the user agreed.'
    assert note("My wife said \u201cI love Lisbon\u201d.") == "The user's wife said \u201cI love Lisbon\u201d."
    assert note('I said "call me" to Ana.') == 'The user said "call me" to Ana.'


def test_probe_check_drops_what_the_memory_does_not_say(tiny):
    """Invented answers, give-aways and unknown episodes never reach the gate; what is left must
    still pass the teacher (a random tiny model agrees with nothing)."""
    model, tok = load(tiny)
    texts = {"e1": "My manager is Rosalind Achterberg."}
    probes = [Probe("e1", "How did the office get moved?", "by truck"),            # made up
              Probe("e1", "Is Rosalind Achterberg my manager?", "Rosalind Achterberg"),  # gives it away
              Probe("e9", "Who is my manager?", "Rosalind"),                      # no such episode
              Probe("e1", "Who do I report to?", "Achterberg")]
    kept, dropped = checked(model, tok, probes, texts)
    assert kept == [] and dropped == {"ungrounded": 1, "trivial": 1, "unknown-episode": 1, "teacher-disagrees": 1}


def test_every_episode_gets_a_teacher_checked_probe(tiny, monkeypatch):
    """The gate asks about every episode: one left without a trusted held-out dream gets a blank cut from
    its own text, and blanks top the probes up to gate.min_probes; a blank the teacher (reading the
    memory) cannot fill is not asked."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from agentsleep.sleep import evidence, probes as probes_mod

    def teacher(model, tok, prompts, **kw):  # stands in for the model reading the memory: it recites it
        lines = [p.split("What you remember:\n- ")[1].split("\n")[0] for p in prompts]
        return ["I am not sure." if "garage" in line else line for line in lines]

    monkeypatch.setattr(probes_mod.gen, "generate", teacher)
    mems = [Memory("a", "My manager is called Ingrid Solberg."), Memory("b", "My favourite tea is jasmine green tea."),
            Memory("c", "I park on level 3 of the garage.")]
    held = [Dream("a", "Who is the user's manager?", "Ingrid Solberg", held_out=True),
            Dream("b", "How did the tea get moved?", "by truck", held_out=True)]  # made up: dropped

    def night(min_probes):
        return SimpleNamespace(cfg=SimpleNamespace(gate=SimpleNamespace(min_probes=min_probes)),
                               plan=SimpleNamespace(memories=mems), engine=SimpleNamespace(with_lora=lambda _: None), reader=None, model=None,
                               tok=AutoTokenizer.from_pretrained(str(tiny)), dreams=SimpleNamespace(probes=held),
                               updates={})

    ps, notes = evidence.trusted_probes(night(2))
    assert [(p.episode_id, p.answer, p.kind) for p in ps] == [("a", "Ingrid Solberg", "dream"),
                                                             ("b", "jasmine green tea", "cloze")]
    assert ps[1].question.endswith("The user's favourite tea is ___")
    assert "for 1 of 3 episodes" in notes[0] and "(1 failed the probe check)" in notes[0], notes
    ps, notes = evidence.trusted_probes(night(4))  # topped up with the one blank left, a's
    assert [(p.episode_id, p.answer) for p in ps] == [("a", "Ingrid Solberg"), ("b", "jasmine green tea"),
                                                      ("a", "Ingrid Solberg")]
    # both of c's blanks ("garage", "level 3") were tried this time, and fail: the teacher cannot answer them
    assert ps[2].kind == "cloze" and "(2 failed the probe check)" in notes[0], notes
    assert "under gate.min_probes 4" in notes[1], notes  # three probes for four asked: the report says so
    assert len(evidence.trusted_probes(night(2))[1]) == 1


def test_cloze_probes_blank_a_name_number_or_date_after_some_context():
    mems = [Memory("a", "Noted: your flight to Lima leaves at 9:40 on 3 March.", speaker="assistant"),
            Memory("b", "Maya."), Memory("c", "Our office moved to the Lindqvist Building last month.")]
    ps = cloze(mems, 10)
    assert [(p.episode_id, p.answer) for p in ps] == [("a", "3 March"), ("c", "Lindqvist Building"), ("a", "9:40"), ("c", "month")]
    assert ps[0].question.endswith("Noted: the user's flight to Lima leaves at 9:40 on ___") and ps[0].kind == "cloze"
    assert len(cloze(mems, 1)) == 1 and cloze([], 5) == []


def test_answer_spans_pick_dates_numbers_names_and_the_closing_phrase():
    spans = spans_mod.answer_spans
    assert spans("Project Falcon launches on 14 February 2027.", 4) == ["14 February 2027", "Project Falcon"]
    assert spans("The user's doctor is Dr. Haruki Tanaka.", 4) == ["Dr. Haruki Tanaka"]
    assert spans("The design review happens every Monday morning.", 4) == ["Monday", "morning"]
    assert spans("The user cannot eat gluten.", 4) == ["gluten"]
    assert spans("The user's locker code is 4471.", 4) == ["4471"]
    assert spans("Caroline met Melanie. She was at the Bank of England on 7 May.", 2) == ["7 May", "Caroline"]
    # a date said the British way is one answer, not its month alone ("the 30th of ___" -> "June")
    assert spans("The quarterly report is due on the 30th of June.", 4) == ["30th of June"]
    assert spans("I was born on the 12th of May, 1990.", 4) == ["12th of May, 1990"]
    assert spans("The user cannot eat gluten.", 0) == [] and spans("", 4) == []
    # the closing phrase, not its last word, when it is short: "tea" alone would be a useless blank
    assert spans("The user's favourite tea is jasmine green tea.", 4) == ["jasmine green tea"]
    assert spans("The user plays the cello in a community orchestra.", 4) == ["community orchestra", "cello"]
    assert spans("The user drinks tea, mostly green.", 4) == ["mostly green", "drinks tea"]  # a comma closes a phrase


def test_answer_spans_of_a_chat_message_skip_fillers_and_find_lower_case_answers():
    spans = spans_mod.answer_spans
    # each clause's closing phrase: the answers a message states in lower case
    assert spans("The user can't do dairy, it wrecks the user's stomach.", 4) == ["stomach", "dairy"]
    assert "new repo lighthouse" in spans("The user named the new repo lighthouse after a long argument.", 4)
    # a word capitalised because it opens a sentence is not a name: fillers, labels, "Turns out"
    assert spans("Honestly the user hates cilantro.", 4) == ["cilantro"]
    assert spans("Btw the user's partner is Joaquin.", 4) == ["Joaquin"]
    assert spans("Ugh, back from the vet. Turns out Mochi has a cold.", 4) == ["Mochi", "cold", "vet"]
    assert spans("Quick note: the cabin's wifi password is pinecone77.", 1) == ["pinecone77"]
    # names that open a sentence stay names; the subject before "is" is not an answer
    assert spans("Maya is the user's daughter.", 4) == ["Maya", "daughter"]
    assert spans("Ingrid leads procurement.", 4)[0] == "Ingrid"
    assert spans("The user's manager is Ana Ruiz.", 4) == ["Ana Ruiz"]
    assert spans("Priya has two kids and lives in Lisbon.", 4)[0] == "Priya"
    assert spans("Yesterday I went to Porto with Ana.", 4) == ["Porto", "Ana"]  # "Yesterday I" is no name
    # a single word ending a clause stays, whatever its ending; an unspaced script gives no runs of words
    assert spans("The user is into hiking, but the user's wife prefers sailing.", 4)[-1] == "hiking"
    assert spans("ユーザーは毎朝コーヒーを飲む。", 6) == []


def test_answer_spans_take_the_object_a_preposition_places_after_the_closing_phrases():
    spans = spans_mod.answer_spans
    assert spans("I've started doing pottery on Saturday mornings.", 4) == ["Saturday", "pottery"]
    assert spans("This summer I grew tomatoes on the balcony.", 4) == ["balcony", "tomatoes"]  # "grew" is the verb
    assert spans("There's a small koi pond in our back garden.", 4) == ["back garden", "small koi pond"]
    assert spans("My grandfather was a fisherman in Norway.", 4) == ["Norway", "fisherman"]
    # not objects: a clause's subject, a state after "is", a verb before an article or an adverb
    assert spans("My best friend from school is Rafael.", 4) == ["Rafael"]
    assert spans("The quarterly report is due on the 30th of June.", 4) == ["30th of June"]
    assert spans("The user can't do dairy, it wrecks the user's stomach.", 4) == ["stomach", "dairy"]
    assert spans("The design review happens every Monday morning.", 4) == ["Monday", "morning"]
    # they come last: n cuts them first
    assert spans("I take the banjo to the office.", 1) == ["office"]
    # a subject opens the clause, adverbs and modals sit between it and its verb; "had" may be the verb
    assert spans("I do yoga at the gym.", 4) == ["gym", "yoga"]
    assert spans("I also grew tomatoes on the balcony.", 4) == ["balcony", "tomatoes"]
    assert spans("I can't stand cilantro in my food.", 4) == ["food", "cilantro"]
    assert spans("I had surgery on Monday.", 4) == ["Monday", "surgery"]
    # punctuation is no word, and a note not in English gives none (its prepositions are not these)
    assert spans("I grew tomatoes — on the balcony.", 4) == ["balcony"]
    assert spans("Mein Bruder wohnt in Berlin und arbeitet in München.", 6) == ["Mein Bruder", "Berlin", "München"]
    # a short phrase around a number or code is asked for too: its blank reads as a question about the thing
    assert spans("I ride the number 19 bus to the harbour every day.", 4) == ["19", "harbour every day", "number 19 bus"]
    assert spans("At the gym I use locker C41 by the pool.", 4) == ["C41", "pool", "locker C41"]
    assert spans("The user's locker code is 4471.", 4) == ["4471"]  # no phrase around it
    near = spans_mod._names_a_number  # a phrase of at most four words, around a number or code as a whole word
    assert near("size 44 shoe", "44") and near("locker C41", "C41")
    assert not near("size 44 hiking boots with soles", "44") and not near("flat 34", "3") and not near("Elm Street", "Elm")


def test_half_a_name_is_widened_to_the_name_the_note_gives():
    note = "The user's dentist is Dr. Okafor, and the user's mentor is called Beatrice Moreau."
    assert spans_mod.whole_name(note, "Moreau") == "Beatrice Moreau"
    assert spans_mod.whole_name(note, "Okafor") == "Dr. Okafor"
    assert spans_mod.whole_name(note, "Beatrice Moreau") == "Beatrice Moreau"  # already whole
    assert spans_mod.whole_name(note, "mentor") == "mentor"  # not a name
    assert spans_mod.whole_name("Moreau met Beatrice.", "Moreau") == "Moreau"  # two names, not one
    assert spans_mod.whole_name("Project Falcon launches on 14 February 2027.", "2027") == "2027"  # dates stay
    assert spans_mod.whole_name(note, "Moreau", "What is the surname of my mentor?") == "Moreau"  # asks for a part
    assert spans_mod.whole_name("Beatrice Moreau and Paul Moreau are the mentors.", "Moreau") == "Moreau"  # shared
    assert spans_mod.whole_name("The user works in Beatrice Moreau's lab.", "Moreau") == "Beatrice Moreau"  # no 's
    # an opening word, a time word or a filler is not part of the name
    assert spans_mod.whole_name("Btw the user's friend Joaquin Ruiz is a pilot.", "Ruiz") == "Joaquin Ruiz"
    assert spans_mod.whole_name("On Monday the user met Lena Park.", "Monday") == "Monday"
    assert spans_mod.whole_name("The user will meet Lena Park Monday.", "Lena") == "Lena Park"  # not "... Monday"
    assert spans_mod.whole_name("Beatrice Moreau is the user's mentor.", "Moreau") == "Beatrice Moreau"  # opens it
    assert spans_mod.whole_name("Yesterday Maya Chen was the user's guest.", "Yesterday") == "Yesterday"
    assert spans_mod.whole_name("Meine Schwester Lena Weber wohnt in Berlin.", "Lena") == "Lena"  # not English


def test_where_asks_only_for_what_a_place_word_introduces():
    from agentsleep.sleep.spans import unplaced

    note = "The user's brother Tomas lives in Vancouver."
    assert unplaced(note, "Tomas") and not unplaced(note, "Vancouver")
    assert not unplaced("The user was born in the small coastal town of Galway.", "Galway")  # its clause has "in"
    assert unplaced("The user's sister Lena works as an architect in Oslo.", "architect")
    assert not unplaced("The user's hometown is Galway.", "Galway")   # no place word to judge by: may be a place
    assert not unplaced("Ana viaja a Madrid con Tomas.", "Tomas")       # not English
    assert not unplaced(note, "lives in Vancouver")      # the answer says where itself
    assert not unplaced(note, "Lisbon") and not unplaced("東京に住んでいる", "東京")  # not in it, not English


def test_echo_questions_ask_for_a_likely_answer_in_its_own_clause():
    echo = spans_mod.echo_question
    assert echo("The user can't do dairy, it wrecks the user's stomach.", "dairy") == "The user can't do what?"
    assert echo("The user can't do dairy, it wrecks the user's stomach.", "stomach") == "It wrecks the user's what?"
    assert echo("The quarterly report is due on the 30th of June.", "30th of June") == "The quarterly report is due when?"
    assert echo("The user is up by 5:30 because the user swims.", "swims") == "The user is up by 5:30 because the user what?"
    assert echo("The user works at St. Brigid's hospital at night.", "St. Brigid's") == "The user works at what hospital at night?"
    assert echo("Maya.", "Maya") is None and echo("The user likes tea.", "coffee") is None  # too short; not in it
    assert echo("My dog is Max. He sleeps on my bed every night.", "Max") == "My dog is what?"  # "Max." ends it
    assert echo("I take my meds at 8 a.m. with breakfast.", "breakfast") == "I take my meds at 8 a.m. with what?"
    assert echo("The standup is at 9:30 in room B2.", "9:30") == "The standup is when in room B2?"
    assert echo("Мой брат Иван живёт в Москве с женой.", "Иван") is None  # the question words are English


def test_writer_asks_per_stem_and_per_likely_answer(tiny):
    model, tok = load(str(tiny))
    cfg = DreamConfig(per_episode=3, stems=["What", "Who", "Where"], answer_spans=2, max_new_tokens=8, blank_stems=[],
                      echo_questions=True)
    written = dream_mod.write(model, tok, MEM, cfg)
    # per likely answer (Biscuit; 14 February 2027, Project Falcon): a bare "Q:" and a typed question word
    assert [(d.episode_id, d.stem) for d in written] == [
        ("e1", "What"), ("e1", "Who"), ("e1", "Where"), ("e2", "What"), ("e2", "Who"), ("e2", "Where"),
        ("e1", "(answer)"), ("e1", "(answer) Which"), ("e2", "(answer)"), ("e2", "(answer) When"),
        ("e2", "(answer)"), ("e2", "(answer) Which"),
        ("e1", "(echo)"), ("e2", "(echo)"), ("e2", "(echo)")]  # asked by rule, per likely answer
    assert [(d.question, d.answer, d.kind) for d in written if d.stem == "(echo)"] == [
        ("The user's dog is a beagle called what?", "Biscuit", "echo"),
        ("Project Falcon launches when?", "14 February 2027", "echo"),
        ("What launches on 14 February 2027?", "Project Falcon", "echo")]
    prompt = dream_mod.answer_prompt(tok, MEM[0].text, "Biscuit")
    assert "whose answer is: Biscuit" in prompt and prompt.rstrip().endswith("Q:")
    assert dream_mod.answer_prompt(tok, MEM[0].text, "Biscuit", "Which").endswith("Q: Which")
    cfg.typed_answer_questions = cfg.echo_questions = False
    assert [d.stem for d in dream_mod.write(model, tok, MEM[:1], cfg)][3:] == ["(answer)"]
    # a question word that cannot fit is not asked: "When" about a note with no time, "Where"/"Who"
    # about a blanked date, "Where" about a blank that the note's place word does not introduce
    # ("The user's brother ___ lives in Vancouver"); "What"/"Which" can ask for anything
    cfg = DreamConfig(per_episode=2, stems=["When", "What"], answer_spans=1, max_new_tokens=8,
                      typed_answer_questions=False, echo_questions=False, blank_stems=["Where", "When", "What"])
    assert [d.stem for d in dream_mod.write(model, tok, MEM[:1], cfg)] == [
        "What", "(answer)", "(blank) Where", "(blank) What"]
    brother = [Memory("e3", "The user's brother Tomas lives in Vancouver.")]   # its first likely answer: Tomas
    assert [d.stem for d in dream_mod.write(model, tok, brother, cfg)] == ["What", "(answer)", "(blank) What"]
    assert [d.stem for d in dream_mod.write(model, tok, MEM[1:], cfg)] == [
        "When", "What", "(answer)", "(blank) When", "(blank) What"]


def test_typed_answer_questions_parse_after_their_prefill_and_rest_trains_the_same_prompt(tiny, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    note = "Project Heron is written in the Rust language."
    fake = lambda model, tok, prompts, **kw: [" language is Project Heron written in?\nA: Rust" if p.endswith("Q: Which")
                                              else " What is Heron?\nA: Project Heron" for p in prompts]
    monkeypatch.setattr(dream_mod.gen, "generate", fake)
    cfg = DreamConfig(per_episode=1, stems=["What"], answer_spans=1)
    written = dream_mod.write(None, tok, [Memory("e", note)], cfg)
    typed = [d for d in written if d.stem == "(answer) Which"]
    assert [(d.question, d.answer) for d in typed] == [("Which language is Project Heron written in?", "Rust")]
    # ReST's M-step fine-tunes the writer on the prompt a dream came from
    prompt, stem = dream_mod.written_from(tok, note, typed[0])
    assert (prompt, stem) == (dream_mod.answer_prompt(tok, note, "Rust", "Which"), "Which")
    bare = Dream("e", "Which project is written in Rust?", "Project Heron", stem="(answer)")
    assert dream_mod.written_from(tok, note, bare) == (dream_mod.answer_prompt(tok, note, "Project Heron"), "")
    plain = Dream("e", "What is Heron?", "Project Heron", stem="What")
    assert dream_mod.written_from(tok, note, plain) == (dream_mod.writer_prompt(tok, note, "What"), "What")


def test_blank_questions_hide_the_answer_from_the_writer_and_rest_trains_the_same_prompt(tiny, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    note = "The user's manager is called Ingrid Solberg."
    seen = []

    def fake(model, tok, prompts, **kw):
        seen.extend(prompts)
        return [" Who is the user's manager?\nMore text" if p.endswith("Q:") else " is the user's manager called?"
                if p.endswith("Q: What") else " manager ___?" for p in prompts]

    monkeypatch.setattr(dream_mod.gen, "generate", fake)
    cfg = DreamConfig(per_episode=1, stems=["What"], answer_spans=1, typed_answer_questions=False,
                      blank_stems=["", "What", "Which"])
    written = dream_mod.write(None, tok, [Memory("e", note)], cfg)
    blank = [d for d in written if d.stem.startswith("(blank)")]
    assert [(d.stem, d.question, d.answer, d.kind) for d in blank] == [
        ("(blank)", "Who is the user's manager?", "Ingrid Solberg", "qa"),
        ("(blank) What", "What is the user's manager called?", "Ingrid Solberg", "qa"),
        ("(blank) Which", "", "", "unparsed")]  # a question holding the blank is no question
    blank_prompts = [p for p in seen if "whose answer is the blank" in p]
    assert len(blank_prompts) == 3 and all("Ingrid" not in p.split("Note:")[-1] for p in blank_prompts)
    assert "The user's manager is called ___." in blank_prompts[0]
    # ReST's M-step trains the writer on the prompt and the completion a blank dream came from: a question, no answer
    prompt, stem = dream_mod.written_from(tok, note, blank[1])
    assert (prompt, stem) == (blank_prompts[1], "What")
    assert dream_mod.written_completion(blank[1], stem) == " is the user's manager called?"
    assert dream_mod.written_completion(Dream("e", "What is X?", "Y", stem="What"), "What") == " is X?\nA: Y"
    assert dream_mod.blank_prompt(tok, note, "Oslo") is None and dream_mod.parse_question("", "no question") is None


def test_blanks_stand_on_whole_words_and_the_closing_phrase_leaves_the_subject():
    assert spans_mod.span_in("The user's preferred colour is red.", "red").start() == 31  # not "prefer-red"
    assert spans_mod.span_in("The user's team drinks tea.", "te") is None

    class Tok:  # renders the chat as plain text: what matters here is the note inside it
        def apply_chat_template(self, msgs, **kw):
            return "\n".join(m["content"] for m in msgs)

    prompt = dream_mod.blank_prompt(Tok(), "Rosa met Ana; Ana is Rosa's aunt.", "Ana")
    assert "Note: Rosa met ___; ___ is Rosa's aunt." in prompt  # every mention blanked: none gives it away
    assert spans_mod._closing("The user keeps bees.") == "bees"  # after the person: a predicate, not a phrase
    assert spans_mod._closing("Maya.") == "" and spans_mod._closing("私の犬はポチです。") == ""
    assert dream_mod.parse_question("What", "'s the user's dog called?\nA: x") == "What's the user's dog called?"
    assert dream_mod.parse_question("Who", "is the user's manager? More") == "Who is the user's manager?"
    # ReST cannot rebuild the prompt of a blank dream whose answer is not in the note: it skips it
    assert dream_mod.written_from(Tok(), "The user's dog is Biscuit.", Dream("e", "Who?", "Rex", stem="(blank) Who")) is None


def test_typed_stems_ask_when_for_dates_and_which_otherwise():
    ts = spans_mod.typed_stem
    assert [ts(s) for s in ("14 February 2027", "February", "Thursday", "3 March", "June 5th", "9:30", "2027-02-14")] == ["When"] * 7
    assert [ts(s) for s in ("Rust", "Project Falcon", "8443", "Maya", "afternoon", "Mayday")] == ["Which"] * 6


def test_shared_prefix_generation_matches_plain_left_padding(tiny, monkeypatch):
    """The writer's few-shot prompts share their first ~150 tokens; running that prefix once must
    give the same greedy text as padding every prompt whole, for rows of different lengths."""
    from agentsleep.models import generate as gen

    model, tok = load(str(tiny))
    prompts = [dream_mod.writer_prompt(tok, m.text, s) for m in MEM for s in ("What", "Where does the user")]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert gen.shared_prefix_len(ids) >= gen.MIN_SHARED_PREFIX and len({len(x) for x in ids}) > 1
    assert gen.shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps a token of its own
    taken = []
    real = gen._generate_shared_prefix
    monkeypatch.setattr(gen, "_generate_shared_prefix", lambda *a, **k: taken.append(1) or real(*a, **k))
    shared = gen.generate(model, tok, prompts, max_new_tokens=12, batch_size=4)
    assert taken
    monkeypatch.setattr(gen, "MIN_SHARED_PREFIX", 10**6)
    assert gen.generate(model, tok, prompts, max_new_tokens=12, batch_size=4) == shared
    assert gen.generate(model, tok, prompts[:1], max_new_tokens=12) == shared[:1]


def test_text_matching():
    assert contains_answer("It is Biscuit, a beagle.", "Biscuit")
    assert not contains_answer("A poodle.", "Biscuit")
    assert contains_answer("She is Ursula K. Le Guin", "Le Guin")
    assert grounded("a beagle", MEM[0].text) and not grounded("a poodle", MEM[0].text)
    assert trivial("What is Biscuit the beagle called?", "Biscuit")


def test_filters_drop_ungrounded_trivial_duplicates(tiny):
    model, tok = load(str(tiny))
    ds = [Dream("e1", "What is the dog's name?", "Biscuit"),
          Dream("e1", "What is the dogs name?", "Biscuit"),            # near duplicate
          Dream("e1", "What breed is the dog?", "poodle"),             # not in the memory
          Dream("e1", "What is Biscuit?", "Biscuit"),                  # answer given away
          Dream("e1", "When did the user get a dog?", "Biscuit"),      # not the kind of answer asked for
          Dream("e2", "", "", kind="unparsed"),
          Dream("e2", "When does Project Falcon launch?", "14 February 2027"),
          Dream("e1", "What is my favourite project?", "Biscuit"),      # the same question about two
          Dream("e2", "What is my favourite project?", "Project Falcon")]  # memories, two answers
    kept, dropped = dream_mod.filter_dreams(model, tok, ds, MEM, DreamConfig(teacher_agreement=False))
    assert [d.question for d in kept] == ["What is the dog's name?", "When does Project Falcon launch?"]
    assert dropped == {"unparsed": 1, "ungrounded": 1, "trivial": 1, "mistyped": 1, "duplicate": 1, "conflicting": 2,
                       "teacher-disagrees": 0}
    brother = [Memory("e3", "The user's brother Tomas lives in Vancouver.")]  # "Where" asks for the place
    where = [Dream("e3", "Where's the user's brother living?", "Tomas"), Dream("e3", "Where does Tomas live?", "Vancouver")]
    kept3, dropped3 = dream_mod.filter_dreams(model, tok, where, brother, DreamConfig(teacher_agreement=False))
    assert [d.answer for d in kept3] == ["Vancouver"] and dropped3["mistyped"] == 1
    # half a name is widened to the whole name the note gives: the morning wants "Beatrice", not "Moreau"
    mentor = [Memory("e4", "My mentor is called Beatrice Moreau.")]
    half = [Dream("e4", "Who is the mentor?", "Moreau")]
    kept4, _ = dream_mod.filter_dreams(model, tok, half, mentor, DreamConfig(teacher_agreement=False))
    assert [d.answer for d in kept4] == ["Beatrice Moreau"]
    # the tiny random teacher cannot answer from context: agreement rejects everything, and
    # each memory left with nothing keeps its grounded items ("rescued") rather than no dreams
    kept2, dropped2 = dream_mod.filter_dreams(model, tok, ds, MEM, DreamConfig(teacher_agreement=True))
    assert [d.kind for d in kept2] == ["rescued", "rescued"] and dropped2["rescued"] == 2
    # a question asked by rule is not the writer's: one the teacher cannot answer is not rescued
    echo = [Dream("e1", "The user's dog is a beagle called what?", "Biscuit", stem="(echo)", kind="echo")]
    assert dream_mod.filter_dreams(model, tok, echo, MEM, DreamConfig(teacher_agreement=True))[0] == []


def test_choose_holds_out_probes_and_ranks_by_value(tiny):
    model, tok = load(str(tiny))
    items = [Dream("e1", f"Question number {i} about the dog?", f"Biscuit {i}") for i in range(6)]
    chosen = dream_mod.choose(model, tok, items, DreamConfig(keep_top_k=2, keep_random=1, probes_per_episode=1))
    probes = [d for d in chosen if d.held_out]
    train = [d for d in chosen if not d.held_out]
    assert len(probes) == 1 and len(train) == 3
    top = sorted((d for d in items if not d.held_out), key=lambda d: -d.value)[:2]
    assert all(t in train for t in top)
    assert max(d.value for d in items) == max(d.value for d in train)  # best item never held out
    # an answer with one question is never the probe: the gate would ask a fact that nothing trains
    for draw in range(6):
        items = [Dream("e1", f"What is the dog called, take {i}?", "Biscuit") for i in range(3)]
        items += [Dream("e1", f"Lone question {i}?", f"answer{i}") for i in range(3)]
        chosen = dream_mod.choose(model, tok, items, DreamConfig(probes_per_episode=1), seed=draw)
        assert [d.answer for d in chosen if d.held_out] == ["Biscuit"]


def test_thin_episodes_train_all_their_items_repeated_up_to_the_floor(tiny):
    from collections import Counter

    from agentsleep.sleep.seed import balanced
    model, tok = load(str(tiny))
    two = [Dream("e1", "What is the dog called?", "Biscuit"), Dream("e1", "Which dog is it?", "a beagle")]
    three = [Dream("e2", f"When does Project Falcon launch, version {i}?", "14 February 2027") for i in range(3)]
    chosen = dream_mod.choose(model, tok, two + three, DreamConfig(probes_per_episode=1))
    assert [d.episode_id for d in chosen if d.held_out] == ["e2"]  # the 2-item episode trains on both
    # with no episode of 3, a 2-item episode still gives a probe: the gate must have one to read
    assert sum(d.held_out for d in dream_mod.choose(model, tok, [Dream(d.episode_id, d.question, d.answer) for d in two],
                                                    DreamConfig(probes_per_episode=1))) == 1
    ds = [Dream("e1", "Q1?", "a"), Dream("e2", "Q2?", "b"), Dream("e2", "Q3?", "c"),
          Dream("e2", "Probe?", "d", held_out=True), Dream("e3", "Earlier?", "x", replay=True)]
    out = balanced(ds, 3)
    assert Counter(d.question for d in out) == {"Q1?": 3, "Q2?": 2, "Q3?": 1, "Earlier?": 1}  # probes never, rehearsal as is
    assert balanced(ds, 0) == [d for d in ds if not d.held_out]
    # a note's second answer with one question among several about its first is repeated up to the floor
    falcon = [Dream("e4", f"Which project launches in February, take {i}?", "Project Falcon") for i in range(3)]
    falcon += [Dream("e4", "When does Project Falcon launch?", "on 14 February 2027"), Dream("e4", "Probe?", "2027", held_out=True)]
    spans = {"e4": ["14 February 2027", "Project Falcon", "the moon"]}
    out = Counter(d.question for d in balanced(falcon, 4, per_answer=3, spans=spans))
    assert out == {"When does Project Falcon launch?": 3, **{d.question: 1 for d in falcon[:3]}}  # no dream, no repeat
    assert Counter(d.question for d in balanced(falcon, 6, per_answer=3, spans=spans))["When does Project Falcon launch?"] == 3
    assert len(balanced(falcon, 6, per_answer=3, spans=spans)) == 6 and balanced(falcon, 4, 0, spans) == falcon[:4]
    both = [Dream("e5", "What happens on 14 February 2027?", "Project Falcon launches on 14 February 2027")]
    both += [Dream("e5", f"Which project, take {i}?", "Project Falcon") for i in range(4)]
    out = Counter(d.question for d in balanced(both, 0, per_answer=3, spans={"e5": spans["e4"]}))
    assert out["What happens on 14 February 2027?"] == 3   # copies made for one answer count for the other


def test_seed_learns_and_gate_decides(tiny):
    model, tok = load(str(tiny))
    dreams = [Dream("e1", "What is the name of the dog?", "Biscuit"),
              Dream("e2", "When does Project Falcon launch?", "14 February 2027")]
    cfg = SeedConfig(epochs=12, min_steps=0, batch_size=4, lr=5e-3, w_distill=1.0, on_policy_every=3, on_policy_samples=2,
                     min_dreams_per_episode=0, min_dreams_per_answer=0)  # its step count is asserted below
    pool = [(dream_mod.student_prompt(tok, "What is the capital of France?"), "Paris is the capital.")]
    pm, stats = seed(model, tok, dreams, MEM, cfg, replay_pool=pool)
    sft = stats.losses["sft"]
    assert stats.steps == 12 and sft[-1] < sft[0] - 0.3
    assert {"sft", "distill_off", "replay_kl", "distill_on", "imitate", "total"} <= set(stats.losses)
    probes = [d.probe() for d in dreams]
    verdict = evaluate(pm, tok, probes, [], pool, GateConfig(min_recall_gain=0.5))
    m = verdict.metrics
    assert set(m) >= {"recall_before", "recall_after", "drift_kl", "retention"}
    assert m["recall_before"] == 0.0 and m["probes"] == 2 and 0 <= m["drift_kl"] < 0.3
    # the verdict follows from its own measurements, whichever way the tiny model's recall went
    learned = m["recall_after"] - m["recall_before"] >= 0.5
    assert verdict.promote == learned, (verdict.reasons, m)
    assert m["gate_failed"] == ([] if learned else ["recall_gain"])
    assert ("recall gain" in verdict.reasons[0]) != learned, verdict.reasons
    # the same expert (greedy: the same answers) under a gate it passes on every count is promoted...
    open_gate = evaluate(pm, tok, probes, [], pool, GateConfig(min_recall_gain=-1, max_drift_kl=10.0))
    assert open_gate.promote and open_gate.metrics["gate_failed"] == [], open_gate.reasons
    assert open_gate.metrics["recall_after"] == m["recall_after"] and open_gate.reasons[0].startswith("recall 0.00 -> ")
    # ...and under one whose drift bound no expert can meet it is rejected for drift alone
    strict = evaluate(pm, tok, probes, [], pool, GateConfig(min_recall_gain=-1, max_drift_kl=0.0))
    assert not strict.promote and strict.metrics["gate_failed"] == ["drift"]
    assert any("drift" in r for r in strict.reasons)


def test_retained_questions_keep_the_pre_sleep_answers(tiny):
    """seed.retain_questions: on earlier facts' questions the expert is held to the pre-sleep model by KL,
    so it moves their answers less than the same training without the term."""
    import torch

    from agentsleep.sleep.tensors import collate, encode, forward_picked, kl_picked

    dreams = [Dream("e1", "What is the name of the dog?", "Biscuit"),
              Dream("e2", "When does Project Falcon launch?", "14 February 2027")]
    earlier = [Dream("old", f"Which city does my {w} live in?", c, replay=True)
               for w, c in (("brother", "Vancouver"), ("aunt", "Porto"), ("friend", "Oslo"), ("sister", "Lima"))]
    moved = {}
    for w in (0.0, 20.0):
        model, tok = load(str(tiny))
        cfg = SeedConfig(epochs=8, min_steps=0, batch_size=2, lr=2e-2, min_dreams_per_episode=0, min_dreams_per_answer=0,
                         w_replay=0.0, w_retain=w, retain_per_step=4)
        pm, stats = seed(model, tok, dreams, MEM, cfg, retain=earlier)
        assert ("retain_kl" in stats.losses) == (w > 0)
        rows = collate([encode(tok, dream_mod.student_prompt(tok, d.question), d.answer) for d in earlier], tok.pad_token_id)
        with torch.no_grad():
            student = forward_picked(pm, rows)[0]
            with pm.disable_adapter():
                parent = forward_picked(pm, rows)[0]
        moved[w] = float(kl_picked(parent.float(), student.float(), reduction="sum"))
    assert moved[20.0] < 0.75 * moved[0.0], moved


def test_known_keeps_the_answers_the_model_gives_itself(tiny):
    from agentsleep.sleep.seed import known

    model, tok = load(str(tiny))
    qs = ["What is my cat called?", "Where does my brother live?"]
    # this random model's greedy reply to anything is newlines: "\n" is the answer it gives itself
    own = [Dream("a", q, "\n") for q in qs]
    others = [Dream("b", q, a) for q in qs for a in ("Miso", "Vancouver", "\n\nMiso")]
    assert known(model, tok, others + own, batch_size=3) == own


def test_forward_picked_equals_full_logits(tiny):
    """The labelled-positions-only forward gives the same logits as the full one, adapter on or off."""
    import torch
    from peft import get_peft_model

    from agentsleep.sleep.objective import lora_config
    from agentsleep.sleep.tensors import collate, encode, forward_picked, picked

    model, tok = load(tiny)
    pm = get_peft_model(model, lora_config(SeedConfig(lora_r=4)))
    for p in pm.parameters():  # a non-zero expert, so "adapter on" differs from "off"
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    b = collate([encode(tok, "Q: where is the cat?", "on the mat"), encode(tok, "", "raw text to learn")], tok.pad_token_id)
    with torch.no_grad():
        on_fast, tgt_fast, rows_fast = forward_picked(pm, b)
        on_full, tgt_full, rows_full = picked(pm(**{k: b[k] for k in ("input_ids", "attention_mask")}).logits, b["labels"])
        with pm.disable_adapter():
            off_fast = forward_picked(pm, b)[0]
            off_full = picked(pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])[0]
    assert torch.equal(tgt_fast, tgt_full) and torch.equal(rows_fast, rows_full)
    assert torch.allclose(on_fast, on_full, atol=1e-5) and torch.allclose(off_fast, off_full, atol=1e-5)
    assert not torch.allclose(on_fast, off_fast, atol=1e-3)


def test_rehearsal_takes_each_earlier_episodes_best_dreams():
    from agentsleep.sleep.pipeline import rehearsal

    ds = [Dream("a", "Q1?", "x", value=1.0), Dream("a", "Q2?", "y", value=3.0), 
          Dream("b", "Q3?", "z", value=2.0), Dream("c", "Q4?", "w", value=5.0)]
    assert [d.question for d in rehearsal(ds, {"a", "b"}, 1)] == ["Q2?", "Q3?"]
    assert [d.question for d in rehearsal(ds, {"a"}, 2)] == ["Q2?", "Q1?"]
    assert rehearsal(ds, {"a", "b"}, 0) == []
    # an episode with fewer dreams than the budget has them repeated: every earlier fact, the same share
    assert [d.question for d in rehearsal(ds, {"a", "b"}, 3)] == ["Q2?", "Q1?", "Q2?", "Q3?", "Q3?", "Q3?"]


def test_rehearsal_order_puts_missed_memories_first_then_the_least_recently_rehearsed(tmp_path):
    """Spaced repetition on a fixed budget: what the serving version missed comes first, then what was
    rehearsed longest ago; the per-probe record the gate keeps says what was missed."""
    import random
    from types import SimpleNamespace

    from agentsleep.memory.ledger import Ledger, probe_id
    from agentsleep.models.registry import Version
    from agentsleep.sleep.select import rehearsal_order

    chain = [Version("v0000", tmp_path, {}),
             Version("v0001", tmp_path, {"episode_ids": ["a", "b", "c", "d"]}),
             Version("v0002", tmp_path, {"episode_ids": ["e"], "replay_ids": ["a", "b"]}),
             Version("v0003", tmp_path, {"episode_ids": ["f"], "replay_ids": ["c"]})]
    eps = [SimpleNamespace(id=i) for i in "abcdef"]
    led = Ledger(tmp_path / "ledger.sqlite")
    led.record_probes([(probe_id("Q?", i), i, "Q?", i) for i in "abcdef"])
    led.record_results("v0003", {probe_id("Q?", "e"): False, probe_id("Q?", "c"): True, probe_id("Q?", "a"): True})
    led.record_results("v0002", {probe_id("Q?", "b"): False})  # an older version's miss: not this one's
    at_risk = led.missed_by("v0003")
    assert at_risk == {"e"}
    order = [e.id for e in rehearsal_order(eps, chain, at_risk, random.Random(0))]
    # e (missed) first; d (last seen in v0001); a, b (rehearsed in v0002) in either order; c, f (v0003) last
    assert order[0] == "e" and order[1] == "d" and set(order[2:4]) == {"a", "b"} and set(order[4:]) == {"c", "f"}
    assert len({tuple(e.id for e in rehearsal_order(eps, chain, at_risk, random.Random(k))) for k in range(20)}) > 1


def test_imitate_reward_prefers_the_real_continuation():
    ref = "is a beagle called Biscuit."
    assert imitate_reward(ref, ref, 0.5, 0.6) > 0.99
    assert imitate_reward("is a beagle named Biscuit", ref, 0.5, 0.6) > imitate_reward("likes rainy weather", ref, 0.5, 0.6)


def test_publish_writes_version_with_adapter(tiny, tmp_path):
    from peft import get_peft_model

    from agentsleep.sleep.objective import lora_config
    model, tok = load(str(tiny))
    pm = get_peft_model(model, lora_config(SeedConfig(lora_r=4)))
    reg = Registry(tmp_path / "reg", base_model=str(tiny))
    v = publish(pm, tok, reg, {"parent": "v0000", "sleep_id": "s1", "episode_ids": ["e1"]})
    assert reg.current_name() == v.name == "v0001"
    assert (v.path / "adapter" / "adapter_config.json").is_file()
    man = json.loads((v.path / "manifest.json").read_text())
    assert man["storage"] == "delta" and "delta.json" in man["checksums"] and man["weights_sha256"]  # no weights copy
    assert man["episode_ids"] == ["e1"]
    m2, _ = load(v.weights)
    assert sum(p.numel() for p in m2.parameters()) == sum(p.numel() for p in load(str(tiny))[0].parameters())


def _tiny_home(tmp_path, tiny, **extra):
    cfg = Config.model_validate({"model": {"base": str(tiny)}, "sleep": {"seed": {"replay_prompts": 4}, **extra}})
    root = Home.init(tmp_path / "home", config=cfg)
    return Home.open(root)


def test_pipeline_nothing_to_do_dry_run_and_lock(tiny, tmp_path):
    h = _tiny_home(tmp_path, tiny)
    assert h.sleep().status == "nothing-to-do"
    for f in ("The user's dog is a beagle called Biscuit.", "Web page said the moon is cheese."):
        h.remember(f, trust="untrusted" if "Web" in f else "trusted")
    dry = h.sleep(dry_run=True)
    assert dry.status == "dry-run" and len(dry.episodes) == 1
    with sleep_lock(h.root):
        with pytest.raises(SleepLockedError, match=f"pid {os.getpid()}"):
            h.sleep()
    # the tiny random model writes no usable dreams: a clean rejection, nothing consolidated, and the episode
    # it could make nothing of is set aside with its reason instead of being retaken every night
    rep = h.sleep()
    assert rep.status == "rejected" and "no usable dreams" in rep.reasons[0] and "set aside" in rep.reasons[1]
    assert h.registry.current_name() == "v0000"
    dog = [e for e in h.episodes() if "beagle" in e.text][0]
    assert rep.dreams["skipped"] == {dog.id: rep.dreams["skipped"][dog.id]} and "filters" in rep.dreams["skipped"][dog.id]
    assert dog.consolidated_in == f"skipped:{rep.sleep_id}" and h.registry.current_name() == "v0000"
    assert [e.trust for e in h.store.list(unconsolidated_only=True)] == ["untrusted"]  # held back by the policy
    assert h.sleep().status == "nothing-to-do"  # nothing left to retake
    assert h.recall("beagle", 1)[0].id == dog.id  # still remembered awake
    assert json.loads((h.root / "sleeps" / rep.sleep_id / "journal.json").read_text())["status"] == "rejected"


def test_kill_mid_sleep_leaves_previous_version(tiny, tmp_path):
    h = _tiny_home(tmp_path, tiny, dream={"per_episode": 6, "max_new_tokens": 64, "batch_size": 1})
    for i in range(6):
        h.remember(f"Memory number {i}: the user's locker code is {1000 + i}.")
    h.close()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from agentsleep.home import Home
        Home.open({str(h.root)!r}, writable=False).sleep()
    """)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    journal = None
    deadline = time.time() + 120
    while time.time() < deadline:
        js = list((h.root / "sleeps").glob("*/journal.json"))
        if js and json.loads(js[0].read_text()).get("stage") == "dream":
            journal = js[0]
            break
        time.sleep(0.2)
    assert journal is not None, "the sleep never reached the dream stage"
    time.sleep(1.0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    h2 = Home.open(h.root)
    assert h2.registry.current_name() == "v0000" and h2.registry.names() == ["v0000"]
    assert json.loads(journal.read_text())["status"] == "running"  # recognisably interrupted
    assert len(h2.store.list(unconsolidated_only=True)) == 6
    assert (journal.parent / "scratch").is_dir()  # its scratch (seeding job, expert) is in the home, not /tmp
    # the lock died with the process: the next sleep runs (and sweeps leftovers)
    assert h2.sleep(dry_run=True).status == "dry-run"
    assert not (journal.parent / "scratch").exists()


def test_forget_schedules_exact_rebuild(tiny, tmp_path):
    from agentsleep.sleep.select import select

    h = _tiny_home(tmp_path, tiny)
    a = h.remember("The user's dog is called Biscuit.").id
    b = h.remember("The user's dentist is Dr. Okafor.").id
    reg = h.registry
    # two earlier sleeps: v0001 absorbed a and b, v0002 absorbed c
    for name, ids in (("v0001", [a, b]),):
        st = reg.new_staging()
        v = reg.commit(st, {"parent": "v0000", "kind": "sleep", "episode_ids": ids, "sleep_id": "s1"})
        h.store.ledger.mark(ids, v.name, "s1")
    c = h.remember("The user's wifi is OrangeFox.").id
    st = reg.new_staging()
    reg.commit(st, {"parent": "v0001", "kind": "sleep", "episode_ids": [c], "sleep_id": "s2"})
    h.store.ledger.mark([c], "v0002", "s2")
    d = h.remember("Unconsolidated note about lunch.").id
    st = reg.new_staging()  # a branch off v0001 that is not served: it holds a through its parent
    reg.commit(st, {"parent": "v0001", "kind": "sleep", "episode_ids": [d], "sleep_id": "s3"}, make_current=False)
    s1 = h.root / "sleeps" / "s1"  # the record of the sleep that consolidated a and b
    s1.mkdir(parents=True)
    (s1 / "dreams.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"episode_id": a, "question": "What is the dog called?", "answer": "Biscuit"},
        {"episode_id": b, "question": "Who is the dentist?", "answer": "Dr. Okafor"})))
    (s1 / "report.json").write_text(json.dumps({"sleep_id": "s1", "status": "promoted", "metrics": {"sample_answers": [
        {"q": "What is the dog called?", "gold": "Biscuit", "pred": "Biscuit"},  # an older report: no episode id
        {"q": "Who is the dentist?", "gold": "Dr. Okafor", "pred": "Okafor", "episode_id": b}]}}))

    r = h.forget(a)
    assert r["versions_holding_it"] == ["v0001"] and r["rebuild_from"] == "v0000" and r["serving"] == "v0002"
    assert r["versions_deleted"] == ["v0003"] and reg.names() == ["v0000", "v0001", "v0002"]  # served: kept
    for f in ("dreams.jsonl", "report.json", "report.html"):  # the sleep's record keeps b and loses a
        text = (s1 / f).read_text()
        assert "Biscuit" not in text and "Okafor" in text, f
    assert h.status()["pending_forget"] == {"versions_holding_forgotten_data": ["v0001", "v0002"],
                                            "next_sleep_rebuilds_from": "v0000"}
    plan = select(h)
    assert plan.parent_version == "v0000" and plan.rebuild
    assert sorted(m.id for m in plan.memories) == sorted([b, c, d])
    with pytest.raises(Exception, match="no episode"):
        h.get(a)
    for tainted in ("v0001", "v0002"):  # a rollback never brings forgotten weights back
        with pytest.raises(InputError, match="forgotten episode"):
            h.rollback(tainted)
    assert h.registry.current_name() == "v0002"
    # fallback serves the clean version at once; the versions holding forgotten episodes go, but the one
    # served until now (with its history) waits for the next sleep: another process may still serve it
    r = h.forget(query="wifi", fallback=True)
    assert h.registry.current_name() == "v0000"
    assert r["versions_deleted"] == [] and h.status()["pending_forget"]["versions_holding_forgotten_data"] == [
        "v0001", "v0002"]
    (reg.root / "cache").mkdir(exist_ok=True)
    (reg.root / "cache" / "v0001-generic.json").write_text("{}")  # that model's answers to the generic prompts
    assert h.erase_forgotten() == ["v0001", "v0002"] and reg.names() == ["v0000"]
    assert not (reg.root / "cache" / "v0001-generic.json").exists()
    assert h.status()["pending_forget"]["versions_holding_forgotten_data"] == []
    assert h.store.ledger.versions_of([b, c]) == {}  # what they consolidated waits for the rebuild
    v = reg.commit(reg.new_staging(), {"parent": "v0000", "kind": "sleep"})
    assert v.name == "v0004"  # a deleted version's name is never given again
    assert sorted(m.id for m in select(h).memories) == sorted([b, d])


def test_a_rebuild_never_starts_from_a_version_a_later_forget_taints_or_deletes(tiny, tmp_path):
    """After a rollback the pending rebuild's start is off the serving lineage; forgetting what that start
    consolidated must move the start back (never rebuild on weights holding it) and must not delete the
    version the next sleep starts from."""
    from agentsleep.sleep.pipeline import reconcile_ledger
    from agentsleep.sleep.select import load_rebuild, save_rebuild, select

    h = _tiny_home(tmp_path, tiny)
    reg = h.registry
    ids = {}
    for n, (key, text) in enumerate((("a", "The user's dog is called Biscuit."), ("g", "The user's gym is Ironworks."),
                                     ("e", "The user's wifi is OrangeFox."), ("f", "The user's car is a red Fiat."))):
        ids[key] = h.remember(text).id
        v = reg.commit(reg.new_staging(), {"parent": f"v{n:04d}", "kind": "sleep", "episode_ids": [ids[key]],
                                           "sleep_id": f"s{n + 1}"})
        h.store.ledger.mark([ids[key]], v.name, f"s{n + 1}")
    assert h.forget(ids["e"])["rebuild_from"] == "v0002"       # v0003 holds e: rebuilt from v0002
    reg.set_current("v0001")                                    # a rollback (as `rollback` does it, no weights here)
    h.store.ledger.unmark_versions(["v0002", "v0003", "v0004"])
    h.forget(ids["g"])                                          # v0002 consolidated g: the plan's start holds it now
    plan = load_rebuild(h.root)
    assert plan["from"] == "v0001" and {"v0002", "v0003", "v0004"} <= set(plan["versions"])
    assert reg.names() == ["v0000", "v0001"]                    # what held e or g is gone; the start is kept
    assert select(h).parent_version == "v0001"                  # and the next sleep can start
    save_rebuild(h.root, {**plan, "from": "v0009"})             # a plan left pointing at a deleted version
    h.erase_forgotten()                                         # (what each sleep start runs) repairs it
    assert load_rebuild(h.root)["from"] == "v0001"
    # a sleep killed after publishing the rebuild and before clearing the plan: the next one sees it is done
    reg.commit(reg.new_staging(), {"parent": "v0001", "kind": "sleep", "episode_ids": [ids["f"]], "sleep_id": "s9"})
    assert reconcile_ledger(h) == [ids["f"]] and load_rebuild(h.root) is None


def test_a_deleted_versions_cached_weights_go_with_it_complete_or_not(tiny, tmp_path):
    h = _tiny_home(tmp_path, tiny)
    reg = h.registry
    a = h.remember("The user's dog is called Biscuit.").id
    reg.commit(reg.new_staging(), {"parent": "v0000", "kind": "sleep", "episode_ids": [a], "sleep_id": "s1"},
               make_current=False)
    half = reg.root / "cache" / "v0001"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half-written merged weights")  # no READY marker: a killed rebuild
    h.forget(a)
    assert reg.names() == ["v0000"] and not half.exists()


def test_gate_decision_caps_the_gain_at_the_headroom():
    from agentsleep.config import GateConfig
    from agentsleep.sleep.gate import decide

    cfg = GateConfig(min_recall_gain=0.05, min_retention=0.9, max_drift_kl=0.5)
    assert decide(cfg, 7, 0.2, 0.6, None, 0.1)[0] == []
    failed, reasons = decide(cfg, 7, 0.2, 0.22, 0.95, 0.1)
    assert failed == ["recall_gain"] and "below gate.min_recall_gain 0.05" in reasons[0]
    failed, reasons = decide(cfg, 7, 1.0, 1.0, None, 0.1)  # already known: nothing to gain, nothing lost
    assert failed == [] and "already known" in reasons[0]
    assert decide(cfg, 7, 0.98, 0.98, None, 0.1)[0] == ["recall_gain"]  # headroom 0.02: a gain of 0 is not enough
    assert decide(cfg, 7, 1.0, 0.9, None, 0.1)[0] == ["recall_gain"]  # known before, forgotten after
    assert decide(cfg, 7, 1.0, 1.0, 0.5, 0.9)[0] == ["retention", "drift"]
    failed, reasons = decide(cfg, 0, 0.0, 0.0, None, 0.1)  # nothing measurable is no evidence against the sleep
    assert failed == [] and "retention and drift alone" in reasons[0]
    assert decide(cfg, 0, 0.0, 0.0, 0.5, 0.1)[0] == ["retention"]


def test_rest_training_in_micro_batches_equals_one_batch(tiny):
    """The ReST inner and writer fits accumulate micro-batches: same weights as one full batch."""
    import torch
    from peft import get_peft_model

    from agentsleep.sleep.rest import _small_lora, _train
    from agentsleep.sleep.tensors import encode

    model, tok = load(str(tiny))
    rows = [encode(tok, f"Note {i}: " + "word " * (3 * i), f"answer {i}") for i in range(7)]
    out = []
    for micro in (100, 3):
        torch.manual_seed(0)
        pm = get_peft_model(model, _small_lora())
        params = [p for p in pm.parameters() if p.requires_grad]
        _train(pm, params, rows, steps=3, lr=1e-2, pad_id=tok.pad_token_id, micro=micro)
        out.append([p.detach().clone() for p in params])
        pm.unload()
    moved = max(float(p.abs().max()) for p in out[0])
    assert moved > 0
    assert max(float((a - b).abs().max()) for a, b in zip(*out)) < 1e-5


def test_long_texts_are_trained_whole_in_pieces_not_cut(tiny):
    """A document longer than seed.max_seq_len becomes several raw-text items that together hold
    every word (encode would otherwise keep only its last max_seq_len tokens)."""
    from agentsleep.sleep.seed import build_items, token_chunks

    _, tok = load(tiny)
    doc = " ".join(f"Sentence {i} says that the harbour crane number {i} lifts {i * 7} tonnes." for i in range(60))
    pieces = token_chunks(tok, doc, 64)
    assert len(pieces) > 3 and all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 64 for p in pieces)
    assert " ".join(pieces).split() == doc.split()
    assert token_chunks(tok, "Short note.", 64) == ["Short note."]
    one_long_sentence = "word " * 300
    assert " ".join(token_chunks(tok, one_long_sentence, 50)).split() == one_long_sentence.split()
    items = build_items(tok, [], [Memory("d", doc)], include_raw=True, max_tokens=66)
    assert [it.target for it in items] == pieces and {it.memory_id for it in items} == {"d"}


@pytest.mark.parametrize("reader", ["base", "parent"])
def test_the_base_model_reads_new_episodes_once_a_sleep_has_published(tiny, tmp_path, monkeypatch, reader):
    """A consolidated parent asked about a note answers from what it learned on earlier nights; with
    sleep.dream.reader = base the writer, the teacher and the probe check are the base weights, while
    the learning values (and the training) stay the parent's."""
    import torch
    from peft import get_peft_model

    from agentsleep.sleep import pipeline
    from agentsleep.sleep.night import Night
    from agentsleep.sleep.objective import lora_config
    from agentsleep.sleep.types import DreamSet, SleepPlan

    h = _tiny_home(tmp_path, tiny, dream={"reader": reader})
    model, tok = load(str(tiny))
    pm = get_peft_model(model, lora_config(SeedConfig(lora_r=4)))
    with torch.no_grad():
        for n_, p in pm.named_parameters():
            if "lora_B" in n_:
                p.fill_(0.05)  # a published expert that changes the weights
    parent = publish(pm, tok, h.registry, {"parent": "v0000", "sleep_id": "s1", "episode_ids": []})
    mems = [Memory("a", "My manager is called Ingrid Solberg.")]
    n = Night(home=h, plan=SleepPlan("s2", parent.name, mems), journal=None, stop=lambda: False, say=lambda *a: None,
              started_at=0.0)
    pipeline.load_parent(n)
    seen = {}

    def fake_dream(model, tok, memories, cfg, **kw):
        seen["reader"], seen["student"], seen["generator"] = model, kw.get("student"), kw.get("generator")
        return DreamSet([Dream("a", "Who is the user's manager?", "Ingrid Solberg")], written=1, dropped={})

    class Engine:  # a vLLM engine holds the parent's weights: it may generate only for a parent that reads
        def with_lora(self, path):
            seen.setdefault("with_lora", []).append(path)
            return self

    def fake_rest(model, tok, memories, ds, cfg, root, **kw):
        seen["rest"] = (model, kw.get("writer_model"))
        return {}

    def fake_probes(night, engine=None):
        seen["probes"] = (night.reader, engine)
        return [], []

    def fake_write(g, *a, **kw):
        seen["writer"] = g
        return []

    monkeypatch.setattr(pipeline, "dream", fake_dream)
    monkeypatch.setattr(pipeline.dreaming, "write", fake_write)
    monkeypatch.setattr(pipeline, "rest_em", fake_rest)
    monkeypatch.setattr(pipeline, "trusted_probes", fake_probes)
    n.engine = Engine()
    n.journal = type("J", (), {"write_dreams": lambda self, *a: None})()
    pipeline.write_dreams(n)
    pipeline.improve_writer(n)
    base_w = dict(load(str(tiny))[0].named_parameters())
    reader_w = dict(n.reader.named_parameters())
    name = next(k for k in base_w if "q_proj" in k)
    student = n.model
    if reader == "base":
        assert n.reader is not n.model and torch.equal(reader_w[name], base_w[name])
        assert not torch.equal(dict(n.model.named_parameters())[name], base_w[name])  # the parent holds the expert
        assert seen["reader"] is n.reader and seen["student"] is n.model and seen["writer"] is n.reader
        assert "with_lora" not in seen and seen.get("generator") is None  # the engine holds the parent
        assert seen["rest"] == (n.model, n.reader)  # tried on the student, the writer fitted on the reader
        reader_model = n.reader
        pipeline.check_probes(n)
        assert seen["probes"] == (reader_model, None) and n.reader is None  # checked by the base, then released
    else:
        assert n.reader is n.model and seen["reader"] is n.model and seen["student"] is n.model
        assert seen["with_lora"] == [None] and seen["generator"] is n.engine and seen["writer"] is n.engine
        assert seen["rest"] == (n.model, n.model)
        pipeline.check_probes(n)
        assert seen["probes"] == (student, n.engine)
    first = Night(home=h, plan=SleepPlan("s3", "v0000", mems), journal=None, stop=lambda: False, say=lambda *a: None,
                  started_at=0.0)
    pipeline.load_parent(first)
    assert first.reader is first.model  # the first night's parent is the base: no second copy


def test_the_learned_writer_only_writes(tiny, tmp_path, monkeypatch):
    """ReST's writer adapter is fitted to write questions the student learns from; it must not also be the
    teacher that checks them, nor write the implications: those read with the plain model."""
    from peft import LoraConfig, get_peft_model

    from agentsleep.sleep.writer import writer_adapter_dir
    from tiny import grounded_writer

    cfg = Config.model_validate({"model": {"base": str(tiny)},
                                 "sleep": {"seed": {"replay_prompts": 2, "epochs": 1, "min_steps": 1},
                                           "rest": {"rounds": 0}, "dream": {"per_episode": 3},
                                           "gate": {"drift_prompts": 2}}})
    h = Home.open(Home.init(tmp_path / "home", config=cfg))
    model, _ = load(str(tiny))
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(
        str(writer_adapter_dir(h.root)))
    seen = {}

    def writer(m, *a, **k):
        seen["write"] = hasattr(m, "peft_config")
        return grounded_writer(m, *a, **k)

    def spy(name, real):
        def f(m, *a, **k):
            seen[name] = hasattr(m, "peft_config")
            return real(m, *a, **k)
        return f

    monkeypatch.setattr(dream_mod, "write", writer)
    monkeypatch.setattr(dream_mod, "filter_dreams", spy("filter", dream_mod.filter_dreams))
    monkeypatch.setattr(dream_mod, "implications", spy("implications", dream_mod.implications))
    h.remember("The user's dog is a beagle called Biscuit.")
    h.sleep()
    assert seen == {"write": True, "filter": False, "implications": False}, seen
    h.close()


def test_a_voice_copy_never_trains_the_words_of_a_held_out_probe():
    d = [Dream("e1", "What is the user's manager's name?", "Ingrid"),
         Dream("e1", "What is your manager's name?", "Ingrid", held_out=True),
         Dream("e2", "What is the user's manager's name?", "Tomas")]  # another note's: kept in both voices
    out = [(x.episode_id, x.question, x.held_out) for x in dream_mod.in_both_voices(d)]
    assert out == [("e1", "What is the user's manager's name?", False),
                   ("e1", "What is my manager's name?", True),
                   ("e2", "What is the user's manager's name?", False),
                   ("e2", "What is my manager's name?", False)]
