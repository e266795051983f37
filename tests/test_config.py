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


def test_chunks_reassemble_exactly():
    text = "One sentence here. " * 200
    chunks = chunk_text(text, 300)
    assert len(chunks) > 1 and all(len(c) <= 300 for c in chunks)
    assert "".join(chunks) == text
