"""Likely answers in a note: the spans the writer is asked questions about.

Dates, numbers and names first, then the note's closing phrase and each clause's (where a chat
message says its answers in lower case: "I can't do dairy, it wrecks my stomach"), then the objects
a preposition follows ("I grew tomatoes on the balcony"). A word
capitalised only because it opens a sentence ("Honestly", "Ugh,", "Turns out") is not a name.
`echo_question` asks for a span by rule, in its own clause. Grammar, not facts of any data set.
"""
from __future__ import annotations

import re

from ..textmatch import _UNSPACED, PERSON, STOP, tokens

_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_DAY = r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day"
_SPANS = [  # in order of preference: dates, numbers, names; then the note's closing phrase (_closing)
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?(?: of)? {_MONTH}(?:,? \d{{4}})?\b"
               rf"|\b{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?\b"),
    re.compile(r"\b\d(?:[\d:.,/-]*\d)?\b"),
    re.compile(r"\b(?:(?:Dr|Mr|Mrs|Ms|Prof|St)\. )?(?!I\b|I['\u2019])[A-Z][\w'-]*"
               r"(?: (?:(?!I\b|I['\u2019])[A-Z][\w'-]*|(?:of|de|van|von|la|le)(?= [A-Z])))*"),
]


def _closing(note: str, longest: int = 3) -> str:
    """The note's closing phrase, usually its object: the words after its last function word ("The user's
    favourite tea is jasmine green tea." -> "jasmine green tea"), or only the last word when more than
    `longest` words follow it or the person does ("The user cannot eat gluten." -> "gluten")."""
    words: list[str] = []
    said = note.strip().rstrip(".!?;:)\"' ").split()
    closed = False  # by a function word, or a comma or full stop: the words after it are a phrase
    for w in reversed(said):
        core = w.strip(".,;:!?()\"'")
        if not core or core.lower() in STOP or (w != core and words):
            closed = True
            break
        if core.lower() in PERSON:  # "The user keeps bees.": what follows the person is a predicate
            break
        if core.lower().removesuffix("'s") in PERSON:  # "... wrecks the user's stomach": the owner closes it
            closed = True
            break
        words.insert(0, core)
    if len(words) == len(said):  # no subject left: a bare name, or a script written without spaces
        return ""
    return " ".join(words if closed and len(words) <= longest else words[-1:])


def as_words(span: str) -> re.Pattern:
    """`span` as whole words: "red" is not in "preferred"."""
    return re.compile(rf"(?<!\w){re.escape(span)}(?!\w)")


def span_in(note: str, span: str) -> re.Match | None:
    """Where `span` stands in `note` as whole words, or None."""
    return as_words(span).search(note)


# Words that carry no answer in a chat message: contractions, auxiliaries and fillers ("I can't do
# dairy" -> "dairy", "Btw my partner is Joaquin" -> "Joaquin"). Grammar, not facts of any data set.
_FILLER = frozenset("""can't cannot don't doesn't didn't won't isn't aren't wasn't i'm i've i'll i'd we're we've
it's that's there's he's she's they're let's just really also still very quite usually always never often
btw fyi ok okay oh ugh hey hi well yeah yes please thanks has have had been being get got like out up down
off per each every anyway sadly myself yourself himself herself itself ourselves themselves""".split())
# Words that end a clause: the run of content words before one is that clause's closing phrase.
_CLAUSE = frozenset("""because while but so and or after before since until unless though although whereas
if when once""".split())
_COPULA = frozenset("is are was were has have had".split())
# After a sentence's first word, these say it was an opener, not a name ("Honestly the ...", "Turns out").
_OPENED = frozenset("i i'm i've i'll i'd my we we're our you your the a an it it's this that out".split())
_ABBREV = r"(?<!\bDr)(?<!\bMr)(?<!\bMrs)(?<!\bMs)(?<!\bProf)(?<!\bSt)(?<!\bJr)(?<!\bSr)(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)(?<!\ba\.m)(?<!\bp\.m)(?<!\bU\.S)"
# Where a clause ends: punctuation followed by a space or the end (not "5:30", not "Dr. Okafor"), or
# the full-width punctuation of unspaced scripts.
_CLAUSE_BREAK = re.compile(rf"[,;:!?](?=\s|$)|{_ABBREV}\.(?=\s|$)|[\u3001\u3002\uff01\uff1f\uff0c\uff1b\uff1a]")
_NEXT_WORD = re.compile(r"\s*(\S*)")
_LABEL = re.compile(r"\s*[A-Za-z][\w'-]*:(?:\s|$)")


def _is_name(note: str, m: re.Match) -> bool:
    """A capitalised match is a name, unless it is one word opening a sentence and reads as an opener:
    a function word or filler itself, a label ("Quick note: ..."), or followed by a comma or by a
    pronoun or article ("Honestly the user hates ...", "Ugh, ...", "Turns out ...", "Yesterday I ...";
    "Maya is ...", "Maya has ...", "Caroline met ..." stay names)."""
    word = m.group(0)
    i = m.start()
    while i > 0 and note[i - 1].isspace():
        i -= 1
    if " " in word.strip() or "." in word or (i > 0 and note[i - 1] not in ".!?:\"'("):
        return True
    nxt = _NEXT_WORD.match(note, m.end()).group(1).strip(".!?").lower().replace("\u2019", "'")
    return not (word.lower() in STOP or word.lower() in _FILLER or note.startswith((",", ":"), m.end())
                or _LABEL.match(note, m.end()) or nxt in _OPENED)


_ENGLISH = frozenset("the is are was were of and".split())  # a note holding none is not judged in English
_ENGLISH_HINT = _ENGLISH | frozenset("i my a to at on with our we you your".split())  # short notes too
# Who does something: the word right after one of these is its verb, not an object ("I grew tomatoes on
# the balcony" -> "tomatoes").
_SUBJECT = frozenset("i we you they he she it i'm i've i'd i'll we're we've you're they're".split()) | PERSON
_EXISTENTIAL = frozenset("there's here's".split())  # "There's a koi pond in ...": no subject to skip
_STATE = frozenset("is are was were am".split())  # "is due on", "was born in": a state, not an object
# Adverbs and modals between a subject and its verb ("I also grew", "I can't stand"); not "had", which may
# be the verb itself ("I had surgery on Monday").
_BETWEEN = _FILLER - frozenset("has have had get got been being".split())
# What follows an object and places it ("pottery on ...", "the banjo from ..."); a run that an article or
# an adverb ends is more often a verb or a subject ("it wrecks the ...", "the review happens every ...").
_PREPOSITION = frozenset("""in on at from to for with of by into onto near about over under during without
within across through around behind beside toward towards via throughout""".split())


def _clause_runs(note: str, longest: int = 3) -> tuple[list[str], list[str]]:
    """Each clause's closing phrase, in the note's order: its last run of content words (up to `longest`),
    leading adverbs and participles trimmed ("just started violin lessons" -> "violin lessons", but
    "hiking" alone stays). "The user can't do dairy, it wrecks the user's stomach" -> "dairy",
    "stomach". A message states most of its answers in lower case at the end of a clause, where the
    date, number and name patterns cannot see them; a run before "is" is the subject, not an answer
    ("The user's manager is ..."). Unspaced scripts have no words to run: none are taken from them.
    Second, the runs inside a clause that a preposition ends: an object says
    its answer before the phrase that places it ("I've started doing pottery on Saturday mornings" ->
    "pottery", "I grew tomatoes on the balcony" -> "tomatoes"). Left out of them: a verb right after its
    subject (adverbs and modals between: "I also grew", "I can't stand"), a state right after "is" ("due
    on"), a clause's first run unless a subject came before it (it is the subject itself: "My best friend
    from school"), and notes not in English. They never replace a closing phrase."""
    def trimmed(run: list[str]) -> list[str]:
        while len(run) > 1 and re.fullmatch(r"[a-z]+(?:ly|ed|ing)", run[0]):
            run = run[1:]
        return run[-longest:]

    out: list[str] = []
    inner: list[str] = []
    english = bool(_ENGLISH_HINT & set(tokens(note)))  # the prepositions are English ones
    for part in _CLAUSE_BREAK.split(note):
        run: list[str] = []
        last: list[str] = []
        after_subject = verb_first = False
        opening = True  # the clause's first run: its subject or an opener, unless a subject came before it
        for w in re.sub(r"[()\"]", " ", part).split() + [""]:
            core = w.strip(".'\u2019").lower().replace("\u2019", "'")
            if core in _CLAUSE or not w:
                if trimmed(run) or last:
                    out.append(" ".join(trimmed(run) or last))
                run, last, after_subject, opening = [], [], False, True
            elif (core not in STOP and core not in PERSON and core not in _FILLER and not core.endswith("'s")
                  and not _UNSPACED.search(core) and re.search(r"\w", core)):
                if not run:
                    verb_first = after_subject and w[:1].islower()
                run.append(w.strip("'\u2019"))  # "Dr." keeps its dot: a clause's own full stop is gone
                after_subject = False
            else:
                if trimmed(run) and core not in _COPULA:
                    last = trimmed(run)
                    obj = trimmed(run[verb_first:])
                    if english and core in _PREPOSITION and obj and (verb_first or not opening):
                        inner.append(" ".join(obj))
                if run or core in _EXISTENTIAL or core in _SUBJECT:
                    opening = False
                # after "is" comes a state ("is due on", "is allergic to"), after a subject its verb
                after_subject = core in _SUBJECT or core in _STATE or (after_subject and not run and core in _BETWEEN)
                run = []
    return out, [r for r in inner if r not in out]


def answer_spans(note: str, n: int) -> list[str]:
    """Up to `n` likely answers in a memory (dates, numbers, names, its closing phrase, each clause's,
    then the objects inside clauses): the writer is asked for a question about each. Stems alone leave gaps: a
    135M writer asked "Q: Where..." about "The user cannot eat gluten." writes "Where can the user eat
    gluten?", and nothing teaches "gluten"."""
    out: list[str] = []
    if n <= 0:
        return out
    note = note.strip()
    found = [m.group(0) for pat in _SPANS[:2] for m in pat.finditer(note)]
    found += [m.group(0) for m in _SPANS[2].finditer(note) if _is_name(note, m)]
    endings, inner = _clause_runs(note)
    found += [_closing(note)] + endings + inner
    for span in found:
        words = span.strip(" .").split()
        while words and words[0].lower() in STOP:  # "The Riverside" -> "Riverside"
            words = words[1:]
        span = " ".join(words)
        # a repeat, or a longer span around an earlier one ("Harbor Mutual" after "Harbor"), unless it is
        # a short phrase around a number ("number 14 tram" after "14")
        if len(span) < 2 or span.lower() in STOP or any(span.lower() in o.lower() or (o.lower() in span.lower()
                                                         and not _names_a_number(span, o)) for o in out):
            continue
        out.append(span)
        if len(out) >= n:
            return out
    return out


def _names_a_number(span: str, number: str) -> bool:
    """`span` is a short phrase around the number or code `number` ("number 14 tram", "size 44 shoe",
    "spot B27"): asked for as well, since a blank over the phrase reads as a question about the thing
    ("The user takes the ___ to the office" -> "What does the user take to the office?"), where a blank
    over the bare number does not ("the number ___ tram")."""
    return (" " not in number and any(c.isdigit() for c in number) and number.lower() in span.lower().split()
            and len(span.split()) <= 4)


_TIME_WORD = re.compile(rf"^(?:{_MONTH}|{_DAY}|Today|Yesterday|Tomorrow|Tonight)$")
_PART_OF_NAME = re.compile(r"\b(?:surname|first name|last name|family name|given name|middle name|initials?)\b", re.I)


def _name_words(run: str) -> list[str]:
    """A capitalised run's words that are a name: without the function words, fillers and time words
    it opens or ends with ("On Monday Lena Park ...", "Btw Joaquin ...", "... Lena Park Monday") and
    without a closing "'s"."""
    words = re.sub(r"['\u2019]s$", "", run).split()

    def not_name(w: str) -> bool:
        return bool(_TIME_WORD.match(w)) or w.lower() in STOP or w.lower() in _FILLER

    while words and not_name(words[0]):
        words = words[1:]
    while words and not_name(words[-1]):
        words = words[:-1]
    return words


def whole_name(note: str, answer: str, question: str = "") -> str:
    """`answer` widened to the whole name in an English `note` it is a part of ("Moreau" -> "Beatrice
    Moreau" in "The user's mentor is called Beatrice Moreau."), else `answer`. A question trained to
    answer half a name teaches half of it: the morning asks "Who is my mentor?" and wants the name as
    the note says it. Not when the question asks for a part ("What is the mentor's surname?"), when two
    names hold the answer (a shared surname), or in a note not in English (German capitalises nouns)."""
    a = answer.strip().rstrip(".")
    if (not a or not all(w[:1].isupper() for w in a.split()) or _PART_OF_NAME.search(question)
            or not _ENGLISH.intersection(tokens(note)) or len(as_words(a).findall(note)) != 1):
        return answer
    names = {" ".join(w) for m in _SPANS[2].finditer(note) if (w := _name_words(m.group(0)))}
    wider = [nm for nm in names if nm != a and " " in nm and as_words(a).search(nm)]
    return wider[0] if len(wider) == 1 else answer


_WHEN = re.compile(rf"{_SPANS[0].pattern}|^(?:{_MONTH}|{_DAY})$"
                   r"|^\d{1,2}:\d{2}$|^\d{4}-\d{2}-\d{2}$|^\d{1,2}/\d{1,2}/\d{2,4}$")  # times, numeric dates


def typed_stem(span: str) -> str:
    """The question word a forward question about `span` starts with: "When" for a date, month or
    weekday, else "Which". The prefill steers a small writer to a forward question ("Which language
    is Project Heron written in?") where a bare "Q:" tends to ask the reverse one."""
    return "When" if _WHEN.search(span) else "Which"


_PLACE_WORDS = frozenset("in at from to near into inside outside around across behind beside toward towards via "
                         "within throughout".split())


def unplaced(note: str, span: str) -> bool:
    """`span` is not the place of the English `note`: the note introduces a place with a place word ("lives
    in Vancouver") and no place word comes before the span in its clause, so "Where ...?" cannot ask for it
    ("Where is the user's brother living? -> Tomas"). False when there is nothing to judge by: the span is
    not in the note or holds a place word itself, the note names no place that way ("The user's hometown
    is Galway": Galway may well be a place), or it is not English."""
    spots = list(as_words(span).finditer(note))
    words = set(tokens(note))
    if not spots or not words & _ENGLISH or not words & _PLACE_WORDS or set(tokens(span)) & _PLACE_WORDS:
        return False

    def clause_before(start: int) -> set[str]:
        begin = max((b.end() for b in _CLAUSE_BREAK.finditer(note, 0, start)), default=0)
        return set(tokens(note[begin:start]))
    return not any(clause_before(m.start()) & _PLACE_WORDS for m in spots)


_BEFORE_TIME = frozenset("on at in by the of every during".split())


def echo_question(note: str, span: str, min_words: int = 3) -> str | None:
    """The clause of `note` that holds `span`, with the span asked for in its place: "The user can't
    do dairy, it wrecks ..." -> "The user can't do what?" ("when" for a time). Written by rule, so it
    exists where the writer asks nothing usable about a message; None when the span is not in the note
    or its clause has fewer than `min_words` other words."""
    m = span_in(note, span)
    if not m:
        return None
    start = max((b.end() for b in _CLAUSE_BREAK.finditer(note, 0, m.start())), default=0)
    end = next((b.start() for b in _CLAUSE_BREAK.finditer(note, m.end())), len(note))
    before, after = note[start:m.start()].strip(), note[m.end():end].strip()
    words = tokens(f"{before} {after}")
    if len(words) < min_words or not any(w in STOP for w in words):
        return None  # too little to ask with, or not English: the question words are English
    wh = "what"
    if typed_stem(span) == "When" and before:  # "due on the 30th of June" -> "due when" ("June is ..." is a name)
        wh, said = "when", before.split()
        while said and said[-1].lower() in _BEFORE_TIME:
            said.pop()
        before = " ".join(said)
    q = " ".join(x for x in (before, wh, after) if x)
    return q[:1].upper() + q[1:] + "?"
