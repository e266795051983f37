"""Any Hugging Face model directory: a chat template that refuses a system turn (Gemma, older Mistral) and a
tokenizer with no template at all (a base model) still get prompts, answers and a sleep (tiny random model)."""
from __future__ import annotations

import shutil

import pytest

from agentsleep.config import Config
from agentsleep.home import Home
from agentsleep.models import generate as gen
from tiny import grounded_writer, tiny_model_dir, trusting_check

NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
             "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("templates")
    base = tiny_model_dir(root)
    out = {}
    for name, template in (("no-system", NO_SYSTEM), ("no-template", None)):
        d = root / name
        shutil.copytree(base, d)
        for f in d.glob("chat_template.*"):
            f.unlink()
        tok = AutoTokenizer.from_pretrained(str(d))
        tok.chat_template = template
        tok.save_pretrained(str(d))
        out[name] = d
    return out


def test_prompts_fold_the_system_turn_or_fall_back_to_a_plain_layout(models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["no-system"]))
    p = gen.chat(tok, "Where is my key?", system="Notes: the key is under the mat.")
    assert p.startswith("<start_of_turn>user\nNotes: the key is under the mat.\n\nWhere is my key?")
    assert p.endswith("<start_of_turn>model\n")
    assert gen.chat(tok, "Hi").startswith("<start_of_turn>user\nHi")  # no system turn: the template as it is
    plain = AutoTokenizer.from_pretrained(str(models["no-template"]))
    assert plain.chat_template is None
    assert gen.chat(plain, "Where is my key?", system="Notes: mat.", prefill="It") == \
        "System: Notes: mat.\n\nUser: Where is my key?\n\nAssistant:It"


@pytest.mark.parametrize("name", ["no-system", "no-template"])
def test_ask_and_a_sleep_run_on_such_models(models, name, tmp_path, monkeypatch):
    monkeypatch.setattr("agentsleep.sleep.dream.write", grounded_writer)
    monkeypatch.setattr("agentsleep.sleep.evidence.checked", trusting_check)
    cfg = Config.model_validate({"model": {"base": str(models[name])},
                                 "sleep": {"seed": {"replay_prompts": 2, "epochs": 1, "min_steps": 2},
                                           "rest": {"rounds": 0},
                                           "dream": {"per_episode": 3, "teacher_agreement": False},
                                           "gate": {"drift_prompts": 2}}})
    with Home.open(Home.init(tmp_path / "home", config=cfg)) as h:
        h.remember("The user's locker code is 4417.")
        assert isinstance(h.ask("What is my locker code?", max_new_tokens=4)["answer"], str)
        rep = h.sleep()
        assert rep.status in ("promoted", "rejected"), (rep.status, rep.reasons)
