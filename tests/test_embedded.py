"""The embedded SmolLM2 cache: checksums, corruption detection, rebuild, clear errors.

The real GGUF -> safetensors conversion takes ~45 s and writes 540 MB, so only
one test (marked integration) converts. The others copy an intact cache (the
user's, when it verifies; otherwise one converted once for the session) into a
temporary AGENTSLEEP_CACHE.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agentsleep.errors import ModelError
from agentsleep.models import embedded
from agentsleep.models.embedded import NAME, STAMP, embedded_model_dir, find_gguf, verify

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="session")
def pristine_cache(tmp_path_factory) -> Path:
    """An intact materialised model directory, never modified by tests."""
    user = Path.home() / ".cache" / "agentsleep" / "models" / NAME
    if os.environ.get("AGENTSLEEP_CACHE"):
        user = Path(os.environ["AGENTSLEEP_CACHE"]) / "models" / NAME
    if verify(user) is None:
        return user
    root = tmp_path_factory.mktemp("pristine-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("AGENTSLEEP_CACHE", str(root))
    mp.delenv("AGENTSLEEP_SMOLLM2_GGUF", raising=False)
    try:
        return embedded_model_dir(progress=lambda m: None)
    finally:
        mp.undo()


def _materialise(pristine: Path, tmp_path: Path, monkeypatch, link_weights: bool) -> Path:
    monkeypatch.setenv("AGENTSLEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AGENTSLEEP_SMOLLM2_GGUF", raising=False)
    d = tmp_path / "cache" / "models" / NAME
    d.mkdir(parents=True)
    for f in pristine.iterdir():
        if f.name == WEIGHTS and link_weights:
            try:
                os.link(f, d / f.name)  # same inode and mtime: tests using this must not write to it
                continue
            except OSError:
                pass
        shutil.copy2(f, d / f.name)  # copy2 keeps mtimes, so verify() need not re-hash
    return d


@pytest.fixture
def cache(tmp_path, monkeypatch, pristine_cache) -> Path:
    """The intact cache under a temporary AGENTSLEEP_CACHE, weights hard-linked (read-only use!)."""
    return _materialise(pristine_cache, tmp_path, monkeypatch, link_weights=True)


@pytest.fixture
def cache_copy(tmp_path, monkeypatch, pristine_cache) -> Path:
    """Like `cache`, with a private copy of the 540 MB weights that a test may damage."""
    return _materialise(pristine_cache, tmp_path, monkeypatch, link_weights=False)


def no_gguf(monkeypatch, tmp_path) -> Path:
    missing = tmp_path / "nowhere" / "SmolLM2.gguf"
    monkeypatch.setenv("AGENTSLEEP_SMOLLM2_GGUF", str(missing))
    return missing


def test_intact_cache_verifies_and_is_used_without_conversion(cache, monkeypatch, tmp_path):
    assert verify(cache) is None
    no_gguf(monkeypatch, tmp_path)  # any attempt to convert would now fail
    said = []
    assert embedded_model_dir(progress=said.append) == cache
    assert said == []


def test_truncated_weights_are_detected(cache_copy):
    size = (cache_copy / WEIGHTS).stat().st_size
    with open(cache_copy / WEIGHTS, "r+b") as f:
        f.truncate(size // 2)
    assert verify(cache_copy) == f"{WEIGHTS} has {size // 2} bytes, expected {size}"


def test_missing_stamp_is_detected(cache):
    (cache / STAMP).unlink()
    assert "no checksum stamp" in verify(cache)


@pytest.mark.parametrize("stamp_text", ["{not json", '{"files": {}}', '{"files": {"config.json": {"size": 1}}}'])
def test_bad_stamp_is_detected(cache, stamp_text):
    (cache / STAMP).write_text(stamp_text)
    assert verify(cache) is not None


def test_missing_file_is_detected(cache):
    (cache / "config.json").unlink()
    assert verify(cache) == "config.json is missing"


def test_same_size_corruption_fails_the_checksum(cache_copy):
    size = (cache_copy / WEIGHTS).stat().st_size
    with open(cache_copy / WEIGHTS, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 64)
    assert (cache_copy / WEIGHTS).stat().st_size == size
    assert verify(cache_copy) == f"{WEIGHTS} fails its sha256 checksum"


def test_copied_cache_is_hashed_once_then_trusted_by_mtime(cache_copy, monkeypatch):
    # a plain copy or a `touch` (new mtime, same bytes) must verify by hash, and record the new mtime
    w = cache_copy / WEIGHTS
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    hashed = []
    real = embedded._sha256
    monkeypatch.setattr(embedded, "_sha256", lambda p: hashed.append(p.name) or real(p))
    assert verify(cache_copy) is None and hashed == [WEIGHTS]
    stamp = json.loads((cache_copy / STAMP).read_text())
    assert stamp["files"][WEIGHTS]["mtime_ns"] == w.stat().st_mtime_ns
    hashed.clear()
    assert verify(cache_copy) is None and hashed == []


def test_missing_gguf_is_a_clear_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTSLEEP_CACHE", str(tmp_path / "empty-cache"))
    missing = no_gguf(monkeypatch, tmp_path)
    with pytest.raises(ModelError) as ei:
        embedded_model_dir(progress=lambda m: None)
    msg = str(ei.value)
    assert "\n" not in msg and str(missing) in msg and "does not exist" in msg
    # a directory is not a GGUF either
    monkeypatch.setenv("AGENTSLEEP_SMOLLM2_GGUF", str(tmp_path))
    with pytest.raises(ModelError, match="is not a file"):
        find_gguf()


def test_broken_cache_without_gguf_is_model_error_and_left_in_place(cache, monkeypatch, tmp_path):
    (cache / STAMP).unlink()
    no_gguf(monkeypatch, tmp_path)
    with pytest.raises(ModelError, match="AGENTSLEEP_SMOLLM2_GGUF"):
        embedded_model_dir(progress=lambda m: None)
    assert (cache / WEIGHTS).is_file()  # nothing destroyed when there is nothing to rebuild from


def test_gguf_is_found_in_the_installed_package(monkeypatch):
    monkeypatch.delenv("AGENTSLEEP_SMOLLM2_GGUF", raising=False)
    g = find_gguf()
    assert g.suffix == ".gguf" and g.stat().st_size > 50_000_000


@pytest.mark.integration
def test_corrupt_cache_is_rebuilt_by_real_conversion(cache_copy):
    """The one real conversion: truncated weights -> embedded_model_dir() rebuilds and the model loads."""
    original = json.loads((cache_copy / STAMP).read_text())["files"][WEIGHTS]
    with open(cache_copy / WEIGHTS, "r+b") as f:
        f.truncate(1000)
    stale = cache_copy.parent / f".{NAME}.tmp-999999"  # left by a conversion that died
    stale.mkdir()
    (stale / WEIGHTS).write_bytes(b"partial")
    said: list[str] = []
    d = embedded_model_dir(progress=said.append)
    assert d == cache_copy and verify(d) is None
    assert any("broken" in m and "bytes" in m for m in said), said
    assert not stale.exists()
    rebuilt = json.loads((d / STAMP).read_text())["files"][WEIGHTS]
    assert rebuilt["size"] == original["size"] and rebuilt["sha256"] == original["sha256"]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    assert getattr(model.config, "quantization_config", None) is None
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] >= 49152 and torch.isfinite(logits).all()


def test_a_hub_id_resolves_to_its_cached_snapshot_offline(tmp_path, monkeypatch):
    """A hub id in model.base becomes the folder of its snapshot (publishing deltas and rebuilding versions
    read files from a folder); offline, from the Hugging Face cache, or a one-line error saying so."""
    from huggingface_hub import constants

    from agentsleep.errors import ModelError
    from agentsleep.models.loader import resolve
    from tiny import tiny_model_dir

    src = tiny_model_dir(tmp_path / "models")
    repo = tmp_path / "hub" / "models--someorg--tiny-lm"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("someorg/tiny-lm") == str(snap)
    with pytest.raises(ModelError) as e:
        resolve("someorg/not-downloaded")
    assert "not in the Hugging Face cache" in str(e.value) and "\n" not in str(e.value)
