"""Generic prompts the pre-sleep model answers, to keep its general behaviour.

REPLAY prompts feed the KL(pre-sleep || student) term during training; DRIFT
prompts are kept apart and only measured by the gate, so the gate does not
grade the student on what it was regularised on.
"""
from __future__ import annotations

import json
from typing import Any

from ..atomic import atomic_write_json
from ..progress import Progress, silent

REPLAY = [
    "What is the capital of France?", "How many days are in a leap year?", "Name three primary colors.",
    "What is photosynthesis?", "Write a haiku about the sea.", "Give me a tip for sleeping better.",
    "What is 12 times 7?", "Who wrote Romeo and Juliet?", "Explain what a noun is.", "What is the boiling point of water?",
    "Suggest a name for a pet goldfish.", "What does a thermometer measure?", "Translate 'thank you' into Spanish.",
    "How do I make a cup of tea?", "What is the largest planet in the solar system?", "Why is the sky blue?",
    "List three fruits that are red.", "What is a prime number?", "Describe a cat in one sentence.",
    "What is the opposite of 'ancient'?", "How many continents are there?", "What language is spoken in Brazil?",
    "Write a short greeting for a birthday card.", "What is gravity?", "What is the freezing point of water in Fahrenheit?",
    "Give an example of a mammal that lives in the ocean.", "What is the square root of 81?", "Who painted the Mona Lisa?",
    "What are the three states of matter?", "How can I stay focused while studying?", "What is an email subject line?",
    "Explain recycling to a child.", "What is the chemical symbol for gold?", "Name a famous bridge.",
    "What do bees make?", "How many legs does a spider have?", "What is the main ingredient of guacamole?",
    "Write one sentence about autumn.", "What is a synonym for 'happy'?", "What is the speed of light, roughly?",
    "What does a computer's CPU do?", "Give me a fun fact about octopuses.", "How do you say hello in French?",
    "What is the tallest mountain on Earth?", "Why do we have seasons?", "What is 100 divided by 4?",
    "What is the capital of Japan?", "Name an instrument with strings.", "What is a verb?", "What causes rain?",
    "How long is a marathon?", "What is the currency of the United Kingdom?", "Suggest a healthy breakfast.",
    "What is the Pythagorean theorem?", "Write a polite way to decline an invitation.", "What is DNA?",
    "How many minutes are in three hours?", "Which animal is known as the king of the jungle?",
    "What is the plural of 'mouse'?", "What does the heart do?", "Give two uses for a paperclip.",
    "What is a volcano?", "How do plants get water?", "What is the capital of Italy?", "Describe the color green.",
    "What is an atom?", "What year did the first person walk on the moon?", "What is a rhyme for 'cat'?",
    "Explain what a budget is.", "What is the largest ocean?", "Name a bird that cannot fly.",
    "What does 'www' stand for?", "How do you boil an egg?", "What is the main language of Germany?",
    "What is a triangle?", "Write a one-line motivational quote.", "What is the sun made of?",
    "How many hours are in a day?", "What is the capital of Canada?", "What is the function of roots in a plant?",
    "Give me a word that starts with Z.", "What is a calendar used for?", "Who was Albert Einstein?",
    "What is 15 plus 27?", "How do magnets work, simply?", "What should I pack for a beach trip?",
    "What is the difference between weather and climate?", "Name a vegetable that is orange.",
    "What is the past tense of 'run'?", "What is the capital of Spain?", "Explain what a password is for.",
    "How do you greet someone politely?", "What is the longest river in Africa?", "What do caterpillars turn into?",
    "Write a sentence using the word 'bright'.", "What is a hexagon?", "What is the moon?",
    "How can I save energy at home?", "What is a dictionary?", "Tell me a short joke.",
]

DRIFT = [
    "What is the capital of Germany?", "Write two sentences about the rain.", "How many sides does a square have?",
    "Who discovered penicillin?", "Explain what a library is.", "What is 9 times 9?",
    "Give me advice for a job interview.", "What is the chemical formula of water?", "Name three kinds of trees.",
    "What does a pilot do?", "Describe a sunset.", "What is the largest desert in the world?",
    "What is an adjective?", "How do birds fly?", "What is the capital of Australia?",
    "Suggest a weekend activity for a family.", "What is electricity?", "Write a thank-you note to a teacher.",
    "What is the smallest prime number?", "Why do leaves change color in the fall?",
]


def generic_pool(model: Any, tok: Any, registry, version: str, n_replay: int, n_drift: int,
                 progress: Progress = silent) -> dict[str, list]:
    """The pre-sleep model's own greedy answers to the generic prompts the replay term and the
    gate's drift check will use (no more: generation is the cost), cached per version."""
    from ..models import generate as gen

    cache = registry.root / "cache" / f"{version}-generic.json"
    try:
        data = json.loads(cache.read_text())
        if len(data["replay"]) >= n_replay and len(data["drift"]) >= n_drift:
            return {"replay": data["replay"][:n_replay], "drift": data["drift"][:n_drift]}
    except (OSError, ValueError, KeyError):
        pass
    prompts = REPLAY[:n_replay] + DRIFT[:n_drift]
    rendered = [gen.chat(tok, p) for p in prompts]
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        progress("replay", done[0], len(prompts), "pre-sleep answers")

    answers = gen.generate(model, tok, rendered, max_new_tokens=48, batch_size=24, progress=tick)
    pairs = [[r, a] for r, a in zip(rendered, answers)]
    data = {"replay": pairs[:n_replay], "drift": pairs[n_replay:]}
    cache.parent.mkdir(exist_ok=True)
    atomic_write_json(cache, data)
    return data
