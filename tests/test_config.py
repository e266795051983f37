import re

import pytest
from agentsleep.config import Config
from agentsleep.errors import ConfigError
from agentsleep.memory.episode import chunk_text


def test_unknown_key_is_a_clear_error(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text("[sleep]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'sleep.bogus'"):
        Config.load(p, env={})


def test_env_override(tmp_path):
    c = Config.load(None, env={"AGENTSLEEP_SLEEP__SEED__LR": "3e-4"})
    assert c.sleep.seed.lr == 3e-4


def test_env_overrides_the_file_field_by_field(tmp_path):
    """The environment wins over config.toml for the fields it names; the file's other fields stay."""
    p = tmp_path / "config.toml"
    p.write_text("[sleep.seed]\nlr = 1e-2\nepochs = 3\n\n[memory]\nrecall_k = 7\n")
    c = Config.load(p, env={"AGENTSLEEP_SLEEP__SEED__LR": "3e-4", "agentsleep_memory__recall_k": "2"})
    assert (c.sleep.seed.lr, c.sleep.seed.epochs, c.memory.recall_k) == (3e-4, 3, 2)
    assert Config.load(p, env={}).sleep.seed.lr == 1e-2


def test_a_bad_value_from_the_environment_names_its_variable(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text("[memory]\nrecall_k = 7\n")
    with pytest.raises(ConfigError, match=r"memory.recall_k: .*got 'abc' from AGENTSLEEP_MEMORY__RECALL_K\)"):
        Config.load(p, env={"AGENTSLEEP_MEMORY__RECALL_K": "abc"})
    p.write_text("[memory]\nrecall_k = 'zz'\n")
    with pytest.raises(ConfigError) as ei:  # the file's own mistake names no variable
        Config.load(p, env={})
    assert "got 'zz')" in str(ei.value) and "AGENTSLEEP_" not in str(ei.value)


def test_env_values_take_their_fields_types():
    env = {"AGENTSLEEP_SLEEP__CONSOLIDATE_UNTRUSTED": "true", "AGENTSLEEP_SLEEP__SEED__MIXED_PRECISION": "bf16",
           "AGENTSLEEP_SLEEP__DREAM__STEMS": "['What', 'Who']", "AGENTSLEEP_SLEEP__SEED__LAUNCH_ARGS": '["--gpu_ids", "0"]',
           "AGENTSLEEP_SERVE__API_KEY": "1234", "AGENTSLEEP_DAEMON__CRON": "0 4 * * *",
           "AGENTSLEEP_DAEMON__IDLE_MINUTES": "5", "AGENTSLEEP_SLEEP__GATE__MIN_RECALL_GAIN": "-1"}
    c = Config.load(None, env=env)
    assert c.sleep.consolidate_untrusted is True and c.sleep.seed.mixed_precision == "bf16"
    assert c.sleep.dream.stems == ["What", "Who"] and c.sleep.seed.launch_args == ["--gpu_ids", "0"]
    assert c.serve.api_key == "1234" and c.daemon.cron == "0 4 * * *"
    assert c.daemon.idle_minutes == 5.0 and c.sleep.gate.min_recall_gain == -1


def test_env_without_the_nested_delimiter_is_not_a_setting():
    assert Config.load(None, env={"AGENTSLEEP_HOME": "/x", "AGENTSLEEP_DEBUG": "1", "OTHER__X": "1"}) == Config()


@pytest.mark.parametrize("env, message", [
    ({"AGENTSLEEP_SLEEP__MAX_EPISODES": "-3"}, "sleep.max_episodes: Input should be greater than or equal to 1"),
    ({"AGENTSLEEP_SLEEP__BOGUS": "1"}, "unknown key 'sleep.bogus'"),
    ({"AGENTSLEEP_SLEP__SEED__LR": "1e-3"}, "unknown key 'slep'"),
    ({"AGENTSLEEP_SLEEP__SEED__LR": "fast"}, "sleep.seed.lr: Input should be a valid number"),
    ({"AGENTSLEEP_SLEEP__SEED__TARGET_MODULES": "q_proj"}, "sleep.seed.target_modules: Input should be a valid list"),
])
def test_bad_env_values_are_one_line_errors(env, message):
    with pytest.raises(ConfigError, match="^config \\(defaults\\): ") as e:
        Config.load(None, env=env)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_env_fields_in_a_file_value_that_is_not_a_section(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text("sleep = 3\n")
    with pytest.raises(ConfigError, match="sleep is not a section"):
        Config.load(p, env={"AGENTSLEEP_SLEEP__SEED__LR": "3e-4"})


def test_os_environ_is_the_default(monkeypatch):
    monkeypatch.setenv("AGENTSLEEP_MEMORY__RECALL_K", "9")
    assert Config.load(None).memory.recall_k == 9


def test_field_descriptions_say_what_not_how_it_went():
    """Descriptions are help text: what a field does and its unit. Measurements live in docs/EXPERIMENTS.md."""
    def walk(model, prefix=""):
        for name, f in model.model_fields.items():
            sub = f.annotation if isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields") else None
            yield from walk(sub, f"{prefix}{name}.") if sub else [(prefix + name, f.description or "")]
    for name, text in walk(Config):
        assert not re.search(r"measured|lifted|ARCHITECTURE|in some runs|\bsleep [12]\b|\b0\.\d\d", text), (name, text)


def test_chunks_reassemble_exactly():
    text = "One sentence here. " * 200
    chunks = chunk_text(text, 300)
    assert len(chunks) > 1 and all(len(c) <= 300 for c in chunks)
    assert "".join(chunks) == text
