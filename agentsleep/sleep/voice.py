"""Voice: every memory is dreamed about from the user's point of view.

The user asks tomorrow in the first person ("Who is my manager?"), whoever
said the fact today: the user ("My manager is Ana"), the assistant ("Noted:
your manager is Ana"), or an agent writing notes about "the user". The
student learns the questions it is trained on, so the sleep rewrites each
memory into the user's voice before the writer reads it, and writes every
dream question in that voice too. Statements about other people ("Ana leads
procurement") have no person to swap and pass through unchanged.

These are grammatical person swaps (I <-> you, the user -> I), not rules
about any particular fact.
"""
from __future__ import annotations

import re

ASSISTANT_SPEAKERS = frozenset({"assistant", "agent", "ai", "bot", "model"})

# The assistant's words, seen from the user: "you" is me, "I" is you.
_SWAP = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself",
    "i'm": "you're", "i've": "you've", "i'll": "you'll", "i'd": "you'd",
    "you": "I", "your": "my", "yours": "mine", "yourself": "myself",
    "you're": "I'm", "you've": "I've", "you'll": "I'll", "you'd": "I'd",
}
# "you" after these words is an object ("remind you", "for you"): "me", not "I".
_OBJECT_AFTER = frozenset("""to for with at from about of on in by than like call tell told remind reminded give gave
send sent ask asked help helped let thank thanks see saw meet met email emailed text texted book booked pick join
invite invited bring brought show showed owe owes cost costs pay paid love loves know knows""".split())
_BE = {("I", "are"): "am", ("I", "were"): "was", ("you", "am"): "are", ("you", "was"): "were"}
_WORD = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)?|[^A-Za-z]+")

# An agent's notes about "the user", in the user's own words.
_THE_USER = [
    (r"\b[Tt]he user's\b", "my"), (r"\b([Dd])oes the user\b", r"\1o I"), (r"\b([Dd]id|[Ww]ill|[Cc]an|[Ss]hould|[Ww]ould) the user\b", r"\1 I"),
    (r"\b(for|to|with|of|by|about|from|at|on) the user\b", r"\1 me"),  # "due for the user is" -> "for me is"
    (r"\b[Ii]s the user\b", "am I"), (r"\b[Hh]as the user\b", "have I"), (r"\b[Ww]as the user\b", "was I"),
    (r"\b[Tt]he user is\b", "I am"), (r"\b[Tt]he user has\b", "I have"), (r"\b[Tt]he user was\b", "I was"),
    (r"\b[Tt]he user (\w+)s\b(?!')", r"I \1"),  # "the user prefers" -> "I prefer"
    (r"(^|[.!?]\s+)[Tt]he user\b", r"\1I"), (r"\bthe user\b", "me"),
]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _swap_persons(text: str, pairs: dict[str, str]) -> str:
    """Replace pronouns word by word (one pass, so I -> you and you -> I do not undo each other),
    then fix the verb ("you are" -> "I am") and the object case ("remind you" -> "remind me")."""
    parts = _WORD.findall(text)
    out: list[str] = []
    prev_word = ""
    for i, p in enumerate(parts):
        low = p.lower().replace("\u2019", "'")
        if p[:1].isalpha() and low in pairs:
            rep = pairs[low]
            if low == "you" and (prev_word in _OBJECT_AFTER or _clause_end(parts, i)):
                rep = "me"
            sentence_start = not "".join(out).strip() or "".join(out).rstrip()[-1] in ".!?:\"'"
            if p[:1].isupper() and not rep.startswith("I") and (not low.startswith("i") or sentence_start):
                rep = _cap(rep)
            p = rep
        out.append(p)
        if p[:1].isalpha():
            prev_word = low
    swapped = "".join(out)
    for (subj, verb), fix in _BE.items():
        swapped = re.sub(rf"\b({subj}) {verb}\b", rf"\1 {fix}", swapped, flags=0 if subj == "I" else re.I)
    swapped = re.sub(r"\b([Aa])re I\b", r"\1m I", swapped)       # "Are you ...?" -> "Am I ...?"
    swapped = re.sub(r"\b([Ww])ere I\b", r"\1as I", swapped)
    swapped = re.sub(r"\b([Aa])m you\b", r"\1re you", swapped)
    swapped = re.sub(r"\b([Ww])as you\b", r"\1ere you", swapped)
    return swapped


def _clause_end(parts: list[str], i: int) -> bool:
    """No word follows before punctuation: "... for you." / "... told you, ..." is an object."""
    for p in parts[i + 1:]:
        if p[:1].isalpha():
            return False
        if p.strip():
            return True
    return True


def from_the_user(text: str) -> str:
    """'The user's manager is Ana' -> 'My manager is Ana'."""
    if not re.search(r"\bthe user\b", text, re.I):
        return text
    for pat, rep in _THE_USER:
        text = re.sub(pat, rep, text)
    return _cap(text)


def user_view(text: str, speaker: str | None = None) -> str:
    """The memory as the user would tell it: the assistant's words with I and you swapped, and
    notes about "the user" in the first person. The user's own words are kept as they are."""
    if (speaker or "").lower() in ASSISTANT_SPEAKERS:
        text = _cap(_swap_persons(text, _SWAP))
    return from_the_user(text)


_YOU_TO_I = {k: v for k, v in _SWAP.items() if k.startswith("you")}


def user_question(question: str) -> str:
    """A dream question in the user's voice: a writer that answers the note back to the user
    ("What is your manager's name?") or about "the user" is turned into the question the user
    will ask ("What is my manager's name?")."""
    q = question
    if re.search(r"\byou", q, re.I):
        q = _swap_persons(q, _YOU_TO_I)
    q = from_the_user(q)
    for pat, rep in _AGREE:
        q = re.sub(pat, rep, q)
    return _cap(q)


_AGREE = [(r"\b([Dd])oes I\b", r"\1o I"), (r"\b([Ii])s I\b", "am I"), (r"\b([Hh])as I\b", r"\1ave I"),
          (r"\bI is\b", "I am"), (r"\bI has\b", "I have"), (r"\bI does\b", "I do")]


# ---- the third person: how an agent's notes about the user read, and how the writer reads best ----
_IRREGULAR_PAST = frozenset("""was were had did went came took gave got made saw said told thought knew found left felt
kept met ran sat stood grew began brought bought caught taught fought sought spent sent lent built held heard paid
read wrote rode drove spoke broke chose froze stole woke wore tore swore bore lost led fed fled bled met shot lit
slept wept swept dealt meant hung won sang rang drank sank swam threw flew drew knew blew forgot became
moved""".split())
_MODAL = frozenset("can could will would shall should may might must cannot ought".split())
_ADVERB = frozenset("also still never always often usually just really only even already sometimes rarely "
                    "mostly actually generally normally".split())
_CONTRACTED = {"i'm": "the user is", "i've": "the user has", "i'll": "the user will", "i'd": "the user would",
               "we're": "the user is", "we've": "the user has", "we'll": "the user will", "we'd": "the user would"}
_POSSESSIVE = {"my": "the user's", "our": "the user's", "mine": "the user's", "ours": "the user's"}
_OBJECT = {"me": "the user", "us": "the user", "myself": "the user", "ourselves": "the user"}
_BE_HAVE = {"am": "is", "are": "is", "have": "has", "do": "does", "was": "was", "were": "was", "don't": "doesn't",
            "haven't": "hasn't", "aren't": "isn't", "wasn't": "wasn't", "weren't": "wasn't"}


def _third_singular(verb: str) -> str:
    """'take' -> 'takes', 'carry' -> 'carries', 'watch' -> 'watches'; past forms, modals and -ing stay."""
    low = verb.lower()
    if low in _BE_HAVE:
        return _BE_HAVE[low]
    if low in _MODAL or low in _IRREGULAR_PAST or low.endswith(("ed", "ing", "n't")) or not low.isalpha():
        return verb
    if low.endswith("y") and len(low) > 2 and low[-2] not in "aeiou":
        return verb[:-1] + "ies"
    if low.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    return verb + "s"


_QUOTED = re.compile(r'("[^"\n]*"|\u201c[^\u201d\n]*\u201d)')


def _outside_quotes(text: str, fn) -> str:
    """`fn` applied to the text outside double quotes: a quotation keeps its speaker's own "I" and
    "we" (a passage quoting "for us as a league" is not about the user)."""
    parts = _QUOTED.split(text)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def about_the_user(text: str, speaker: str | None = None, who: str = "the user") -> str:
    """The memory as a note about "the user" (the user's "I, my, we, our" and the assistant's "you,
    your"), with the verbs agreeing: "I take the 7:15 ferry" -> "The user takes the 7:15 ferry". A
    small writer asks sharper questions about such notes, and the teacher cannot mistake whose
    manager or flight it is. Text about other people, and words inside double quotes, pass through
    unchanged."""
    s = _outside_quotes(text, lambda part: _about(part, speaker, who))
    return re.sub(rf"(^|[.!?]\s+){re.escape(who)}", lambda m: m.group(1) + _cap(who), s)


def _about(text: str, speaker: str | None, who: str) -> str:
    if (speaker or "").lower() in ASSISTANT_SPEAKERS:
        text = _swap_persons(text, {**_SWAP})  # now in the user's own words
    parts = _WORD.findall(text)
    out: list[str] = []
    subject_pending = False
    for i, p in enumerate(parts):
        low = p.lower().replace("\u2019", "'")
        if not p[:1].isalpha():
            out.append(p)
            continue
        if subject_pending and low not in _ADVERB:
            p = _third_singular(p)
            subject_pending = False
        elif low in _CONTRACTED:
            p = _CONTRACTED[low].replace("the user", who)
        elif low in ("i", "we"):
            p, subject_pending = who, True
        elif low in _POSSESSIVE:
            p = f"{who}'s"
        elif low in _OBJECT:
            p = who
        out.append(p)
    return "".join(out)


USER_SPEAKERS = frozenset({"user", "human", "me"})


def note(text: str, speaker: str | None = None, *, who: str | None = None, when: str | None = None) -> str:
    """What the sleep reads for one episode: a note about the person it concerns, the way an agent
    writes notes ("The user's manager is Ana", "Caroline went to ..."). Whose "I" and "you" it is
    is resolved here, once: the model reading "My manager is Ana" in its context may take "my" for its
    own (measured on the development set: 0.75 closed-book with first-person facts in context, 0.95
    with the same facts about "the user"). Dated when the caller gave a date, so that "when did ...?"
    has an answer to learn."""
    if who and who.lower() not in USER_SPEAKERS | ASSISTANT_SPEAKERS:
        body = about_the_user(re.sub(rf"^\s*{re.escape(who)}\s*:\s*", "", text), who=who)
    else:
        body = about_the_user(text, "assistant" if (who or "").lower() in ASSISTANT_SPEAKERS else speaker)
    if not when:
        return body
    first = body.split(" ", 1)[0]
    return f"On {when}, {first.lower() + body[len(first):] if first in _LOWER_AFTER_DATE else body}"


_LOWER_AFTER_DATE = frozenset("The My A An Our Your This That It We They He She You".split())
