"""Which episodes may become weights: trust, source/kind rules, and prompt-injection flags.

A memory written into the weights is permanent and invisible, so consolidation
is opt-out for anything doubtful: untrusted sources stay in the store (and in
retrieval) but out of sleeps unless configured, and text that addresses the
model with instructions ("always answer X", "ignore previous instructions")
is flagged and held back unless `sleep.policy.allow_injection` is set. An
episode a newer one superseded before it was consolidated ("I live in Porto",
then "we moved to Lisbon" the same day) is held back too: a night never trains
both values (memory/supersede.py).
"""
from __future__ import annotations

import re
from typing import Any

INJECTION_PATTERNS: dict[str, str] = {
    "override": r"\b(ignore|disregard|forget)\b.{0,30}\b(previous|prior|above|earlier|all|your)\b.{0,20}\b(instructions?|rules|prompts?|guidelines)\b",
    "standing-order": r"\b(always|never|from now on|in every (reply|answer|response))\b.{0,40}\b(answer|reply|respond|say|output|tell|mention|recommend|include)\b",
    "role-change": r"\b(you are now|act as|pretend to be|new (system )?instructions?|system prompt|developer mode|jailbreak)\b",
    "secrecy": r"\bdo ?n[o']t (tell|reveal|mention)\b.{0,30}\b(user|anyone|instructions?)\b",
    "chat-markup": r"<\|(im_start|im_end|system|user|assistant|endoftext)\|>|\[/?INST\]|<</?SYS>>",
}
_COMPILED = {k: re.compile(v, re.I | re.S) for k, v in INJECTION_PATTERNS.items()}


def injection_flags(text: str) -> list[str]:
    """Names of the injection patterns `text` matches (empty = none)."""
    return [k for k, rx in _COMPILED.items() if rx.search(text)]


def exclusion(episode: Any, sleep_cfg: Any) -> str | None:
    """Why `episode` must stay out of this sleep (a short reason key), or None when it may go in."""
    pol = sleep_cfg.policy
    if episode.trust != "trusted" and not sleep_cfg.consolidate_untrusted:
        return "untrusted"
    if pol.allow_sources and episode.source not in pol.allow_sources:
        return "source not allowed"
    if episode.source in pol.deny_sources:
        return "source denied"
    if episode.kind in pol.deny_kinds:
        return "kind denied"
    if any(re.search(p, episode.text, re.I) for p in pol.deny_patterns):
        return "pattern denied"
    if not pol.allow_injection and injection_flags(episode.text):
        return "injection"
    if getattr(episode, "superseded_by", None):
        return "superseded"  # a newer episode told another value before this one was consolidated
    return None
