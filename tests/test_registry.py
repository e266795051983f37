"""The model registry: immutable versions, atomic CURRENT, rollback, crash leftovers."""
import json
import os

import pytest

from agentsleep.errors import RegistryError
from agentsleep.models.registry import BASE_VERSION, Registry


def _stage(reg, payload="w"):
    d = reg.new_staging()
    (d / "model.safetensors").write_text(payload)
    return d


def test_base_version_and_current(tmp_path):
    reg = Registry(tmp_path / "r", base_model="embedded")
    assert reg.names() == [BASE_VERSION]
    assert reg.current_name() == BASE_VERSION
    assert reg.current().weights == "embedded"
    # v0000 stands for the configured base, whatever it is configured to now
    assert Registry(tmp_path / "r", base_model="/models/other").current().weights == "/models/other"


def test_commit_flips_current_and_keeps_lineage(tmp_path):
    reg = Registry(tmp_path / "r", base_model="embedded")
    v1 = reg.commit(_stage(reg, "one"), {"parent": BASE_VERSION, "sleep_id": "s1"})
    v2 = reg.commit(_stage(reg, "two"), {"parent": v1.name, "sleep_id": "s2"})
    assert (v1.name, v2.name) == ("v0001", "v0002")
    assert reg.current_name() == "v0002"
    assert [v.name for v in reg.lineage()] == [BASE_VERSION, "v0001", "v0002"]
    assert reg.current().weights == str(tmp_path / "r" / "versions" / "v0002")
    assert json.loads((v2.path / "manifest.json").read_text())["sleep_id"] == "s2"
    assert list((tmp_path / "r" / "staging").iterdir()) == []


def test_set_current_validates(tmp_path):
    reg = Registry(tmp_path / "r", base_model="embedded")
    reg.commit(_stage(reg), {"parent": BASE_VERSION})
    assert reg.set_current(BASE_VERSION).name == BASE_VERSION
    with pytest.raises(RegistryError, match="no version v0009"):
        reg.set_current("v0009")
    with pytest.raises(RegistryError, match="not a version name"):
        reg.set_current("../../etc")
    assert reg.current_name() == BASE_VERSION


def test_incomplete_version_is_invisible_and_staging_swept(tmp_path):
    reg = Registry(tmp_path / "r", base_model="embedded")
    # a crash after moving but before the manifest cannot happen (manifest is written first),
    # but a half-copied directory without manifest must never count as a version
    (reg.versions_dir / "v0001").mkdir()
    assert reg.names() == [BASE_VERSION]
    dead = reg.staging_dir / "stage-999999-deadbeef"
    dead.mkdir()
    live = reg.new_staging()
    assert reg.sweep_staging() == 1
    assert not dead.exists() and live.exists()


def _chain(tmp_path, n: int) -> Registry:
    """A registry holding v0001..v000n, each on the one before."""
    reg = Registry(tmp_path / "r", base_model="embedded")
    parent = BASE_VERSION
    for _ in range(n):
        parent = reg.commit(_stage(reg), {"parent": parent}).name
    return reg


def test_prune_keeps_current_lineage(tmp_path):
    reg = _chain(tmp_path, 4)
    reg.set_current("v0002")
    assert reg.prune(keep=1) == []  # v0004 is kept, and so is its parent v0003: its history stays whole
    assert [v.name for v in reg.lineage("v0004")] == [BASE_VERSION, "v0001", "v0002", "v0003", "v0004"]
    side = reg.commit(_stage(reg), {"parent": "v0001"}).name  # a branch abandoned by a rollback to v0002
    reg.set_current("v0002")
    assert reg.prune(keep=1) == ["v0003", "v0004"] and side in reg.names()
    assert not list(reg.versions_dir.glob(".trash-*"))  # deleted out of sight, then removed


def test_current_write_is_atomic(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "r", base_model="embedded")
    v = reg.commit(_stage(reg), {"parent": BASE_VERSION}, make_current=False)
    real = os.replace

    def boom(src, dst):
        if str(dst).endswith("CURRENT"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        reg.set_current(v.name)
    monkeypatch.setattr(os, "replace", real)
    assert reg.current_name() == BASE_VERSION


def test_prune_copes_with_a_history_an_older_prune_cut(tmp_path):
    """An older prune deleted parents of kept full versions: prune must not fail on the gap."""
    import shutil

    reg = _chain(tmp_path, 4)
    reg.set_current("v0001")
    shutil.rmtree(reg.versions_dir / "v0003")  # v0004's parent, gone
    assert reg.prune(keep=1) == ["v0002"] and "v0004" in reg.names()


def test_commit_syncs_the_weights_before_they_become_visible(tmp_path, monkeypatch):
    """A power cut must not leave CURRENT pointing at weight files whose data never reached the disk:
    every staged file is fsynced before the rename into versions/, and that before CURRENT flips."""
    reg = Registry(tmp_path / "r", base_model="embedded")
    stage = _stage(reg)
    (stage / "adapter").mkdir()
    (stage / "adapter" / "adapter_model.safetensors").write_text("a")
    events, real_fsync, real_rename, real_replace = [], os.fsync, os.rename, os.replace

    def fsync(fd):
        try:
            events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        except OSError:
            events.append(("fsync", "?"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", os.path.basename(b))), real_rename(a, b))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))), real_replace(a, b))[1])
    reg.commit(stage, {"parent": BASE_VERSION})
    publish = events.index(("rename", "v0001"))
    synced = {name for what, name in events[:publish] if what == "fsync"}
    assert {"model.safetensors", "adapter_model.safetensors", "manifest.json"} <= synced
    assert publish < events.index(("replace", "CURRENT"))
    assert reg.current_name() == "v0001"


def test_commit_on_a_full_disk_is_a_registry_error_and_current_stays(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "r", base_model="embedded")
    stage = _stage(reg)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RegistryError, match="cannot publish v0001 .*current version is unchanged"):
        reg.commit(stage, {"parent": BASE_VERSION})
    monkeypatch.undo()
    assert reg.current_name() == BASE_VERSION and reg.names() == [BASE_VERSION]
