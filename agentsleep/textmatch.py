"""Answer matching shared by the dream filters, the gate and the benchmarks.

Works on any script: words are Unicode letters and digits, Latin and Greek
accents are ignored ("café" matches "cafe"), and Chinese and Japanese text,
written without spaces, counts each ideograph or kana as a word.
"""
from __future__ import annotations

import re
import unicodedata

STOP = frozenset("""a an the of to in on at for by with and or is are was were be been it its this that these
those my your his her their our i you he she we they me him them do does did what who where when which how why
whose whom as from into about than then so if not no yes s""".split())


# Han ideographs, hiragana, katakana (and their extensions, half-width forms): no spaces between words
_UNSPACED = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
# Not part of a word: everything but letters, digits, apostrophes, spaces and combining marks (Devanagari's vowel
# signs are marks: without them "दिन" and "दान" would be one word), and a decimal point kept by `_DECIMAL`.
_POINT = "\ue000"
_NOT_WORD = re.compile(r"[^\w'\s\ue000\u0300-\u036f\u0900-\u0dff\u0e31\u0e34-\u0e3a\u0e47-\u0e4e"
                       r"\u0f18-\u0fbc\u1000-\u109f\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed]+|_")
# "5.3" is one number ("3.5" must not match it); a date such as "14.02.2027" stays three words
_DECIMAL = re.compile(r"(?<!\d)(?<!\d\.)(\d+)\.(\d+)(?!\d|\.\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,500" is 1500 (a comma before three digits only)


def _strip_latin_accents(text: str) -> str:
    """Drop the accents on Latin and Greek letters ("café", "λέγεται" are often typed without them);
    scripts whose marks tell letters apart (Cyrillic й/и, Devanagari, kana) keep theirs."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.combining(ch) and out and out[-1] < "\u0400":
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("’", "'")
    text = _strip_latin_accents(text).casefold()
    text = _UNSPACED.sub(lambda m: f" {m.group(0)} ", text)
    text = _DECIMAL.sub(lambda m: m.group(1) + _POINT + m.group(2), _THOUSANDS.sub("", text))
    text = _NOT_WORD.sub(" ", text).replace(_POINT, ".")
    text = re.sub(r"(?<!\w)'+|'+(?!\w)", " ", text)  # quotes around a word ("'Biscuit'"), not "o'clock"
    return re.sub(r"\s+", " ", text).strip()


_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")


def tokens(text: str) -> list[str]:
    """Words, with "'s" dropped and English ordinals read as their number ("the 9th of September" and
    "September 9" say the same date)."""
    return _ORDINAL.sub(r"\1", normalize(text).replace("'s", "")).split()


def content_tokens(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in STOP]


# Words that deny the word after them ("You are not vegan" does not answer "vegan"), and the words that
# may stand between ("isn't a beagle"). "No" is left out: "No gluten." answers "Which ingredient must I
# avoid?". A denial further off ("does not eat pork") is left alone too, since it may be what the question
# asks about ("What does the user not eat?"), and none reaches across punctuation ("Not sure. Vegan.").
NEGATIONS = frozenset("""not never cannot isn't aren't wasn't weren't don't doesn't didn't won't can't couldn't
hasn't haven't hadn't""".split())
_BETWEEN = frozenset("a an the any very really".split())
_CLAUSE = re.compile(r"[.,;:!?\n]+(?:\s|$)")  # a sentence or clause ends ("5.3" and "1,500" do not split)


def _denials(prediction: str, one=lambda w: w) -> list[tuple[str, bool]]:
    """Each word of the prediction (through `one`), and whether a negation right before it, within its
    clause, denies it."""
    out: list[tuple[str, bool]] = []
    for clause in _CLAUSE.split(prediction):
        toks = [one(w) for w in tokens(clause)]
        for j, w in enumerate(toks):
            i = j - 1
            while i >= 0 and toks[i] in _BETWEEN:
                i -= 1
            out.append((w, i >= 0 and toks[i] in NEGATIONS))
    return out


def denied(prediction: str, want: set[str], framing: list[str], one=lambda w: w) -> bool:
    """True when some wanted word is denied wherever the prediction says it, and neither the answer nor
    the question (`framing`'s words) holds a negation itself (a denial asked for is matched as written)."""
    if NEGATIONS.intersection(framing):
        return False
    said: dict[str, bool] = {}  # wanted word -> denied at every mention so far
    for w, no in _denials(prediction, one):
        if w in want:
            said[w] = said.get(w, True) and no
    return any(said.values())


def contains_answer(prediction: str, answer: str, question: str = "") -> bool:
    """True when every content word of `answer` occurs in `prediction` (keyword containment), none of
    them denied there (see `denied`; `question` only exempts a question that asks about a denial)."""
    want = content_tokens(answer) or tokens(answer)
    if not want:
        return False
    have = set(tokens(prediction))
    return all(w in have for w in want) and not denied(prediction, set(want), tokens(answer) + tokens(question))


# How the sleep's own dreams name the person the memory is about ("The user's dog is ..."): framing that an
# answer about the same fact may say another way ("Your dog is ..."), never the fact itself.
PERSON = frozenset({"user", "users"})


_NAMING = frozenset("called named known".split())  # "a beagle named Biscuit" says what "called Biscuit" does


def answers_question(prediction: str, question: str, answer: str) -> bool:
    """True when `prediction` says what `answer` adds to `question`: every content word of the answer that
    the question does not already hold, leaving out how the person is named and the naming verb ("named"
    for "called"), a plural read as its singular. "Where can I find the user's favourite tea?" with the
    answer "The user's favourite tea is jasmine green tea" wants "jasmine green", so "Your favourite tea is
    jasmine green tea" answers it; `contains_answer` would want "user" too, and a retrained model that
    changes its framing would read as one that forgot the fact."""
    asked = {_one(w) for w in tokens(question)} | PERSON | _NAMING
    want = [w for w in map(_one, content_tokens(answer)) if w not in asked]
    if not want:
        return contains_answer(prediction, answer, question)
    have = {_one(w) for w in tokens(prediction)}
    return all(w in have for w in want) and not denied(prediction, set(want), tokens(answer) + tokens(question), _one)


def _one(word: str) -> str:
    """A plural read as its singular ("window seat" answers "window seats"), on both sides alike. Crude on
    purpose ("news" reads "new", "Lucas" "Luca"): it only eases the gate's reading of a reworded answer."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def grounded(answer: str, memory: str, min_share: float = 0.6) -> bool:
    """Most of the answer's content words appear in the memory, and all of its names and numbers do.

    Not all words: a small model paraphrases ("named" for "called"); a share keeps those while still
    rejecting answers the memory does not support. But a name or number the memory does not hold is
    invented ("Maya Chen" from "named Maya", "September 9, 2023" from a date without a year), and one
    such item teaches the student to confabulate."""
    want = content_tokens(answer)
    if not want:
        return False
    have = set(tokens(memory))
    if any(w not in have for w in specifics(answer)):
        return False
    return sum(w in have for w in want) / len(want) >= min_share


_CASED_WORD = re.compile(r"\b\w+", re.UNICODE)


def specifics(text: str) -> list[str]:
    """The names and numbers of a text, as tokens: words written with a capital letter (in scripts with
    case) other than a sentence's first, and words holding a digit."""
    out: list[str] = []
    text = unicodedata.normalize("NFKC", text)
    for m in _CASED_WORD.finditer(text):
        w = m.group(0)
        first = not text[:m.start()].strip() or text[:m.start()].rstrip()[-1] in ".!?:"
        if (w[:1].isupper() and not first) or any(ch.isdigit() for ch in w):
            out += [t for t in tokens(w) if t not in STOP]
    return out


def trivial(question: str, answer: str) -> bool:
    """The answer is already given away by the question."""
    want = content_tokens(answer)
    return bool(want) and all(w in set(tokens(question)) for w in want)


_MONTHS = "january february march april may june july august september october november december"
_DAYS = "monday tuesday wednesday thursday friday saturday sunday"
# Words that say when: an answer to "When ...?" holds one, or a number ("5pm", "1990s", "9:30").
TIME_WORDS = frozenset(f"""{_MONTHS} {_DAYS} jan feb mar apr jun jul aug sep sept oct nov dec morning afternoon
evening night noon midnight dawn dusk sunrise sunset bedtime breakfast lunch dinner today tonight tomorrow
yesterday day week weekend weekday month year spring summer autumn fall winter ago last next daily weekly
monthly yearly annually hour minute second am pm o'clock christmas easter holiday holidays birthday semester
quarter season century decade before after during since until""".split())
_NUMBER_WORDS = frozenset("""one two three four five six seven eight nine ten eleven twelve thirteen fourteen
fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
thousand million billion dozen half once twice none zero few several couple lot many""".split())


def _timely(w: str) -> bool:
    return w in TIME_WORDS or w.removesuffix("s") in TIME_WORDS or any(c.isdigit() for c in w)


def mistyped(question: str, answer: str) -> bool:
    """The answer is not the kind the question asks for (English question words): "When did I run the
    marathon?" -> "Berlin", "Where did my sessions move?" -> "Tuesday", "How many ...?" -> "Recife".
    Answers in a script without Latin letters, other languages' questions and other question words pass."""
    q = tokens(question)
    a = [w for w in tokens(answer) if w not in STOP and w not in PERSON]
    if not q or not a or not re.search(r"[a-z0-9]", " ".join(a)):
        return False
    asks_time = any(_timely(w) and not w.isdigit() or w in ("time", "date") for w in q)
    if q[0] == "when":
        return not any(_timely(w) for w in a)
    if q[:2] in (["how", "many"], ["how", "much"], ["how", "old"]):
        return not any(any(c.isdigit() for c in w) or w in _NUMBER_WORDS for w in a)
    if q[0] == "where" or (q[0] in ("what", "which") and not asks_time):  # "Who": "June" and "May" are names too
        return all(_timely(w) for w in a) and any(w.removesuffix("s") in TIME_WORDS for w in a)  # only a time
    return False


def f1(prediction: str, answer: str) -> float:
    p, a = tokens(prediction), tokens(answer)
    if not p or not a:
        return 0.0
    common = sum(min(p.count(t), a.count(t)) for t in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(a)
    return 2 * prec * rec / (prec + rec)


def teacher_agrees(reply: str, answer: str, question: str = "") -> bool:
    """The teacher (the model reading the memory) gives `answer`: all its words, or most of them (token-F1
    at least one half), and never as a denial ("Not vegan." is no "vegan")."""
    if contains_answer(reply, answer, question):
        return True
    want = set(content_tokens(answer) or tokens(answer))
    return f1(reply, answer) >= 0.5 and not denied(reply, want, tokens(answer) + tokens(question))
