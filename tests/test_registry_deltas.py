"""Adapter-sized versions: a sleep's version stores its expert, the weights are rebuilt exactly on load."""
import json
import shutil
import threading

import pytest
import torch

from agentsleep.config import Config, SeedConfig
from agentsleep.errors import RegistryError
from agentsleep.home import Home
from agentsleep.models import deltas
from agentsleep.models.loader import load
from agentsleep.sleep.objective import lora_config
from agentsleep.sleep.publish import publish
from tiny import tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"), layers=3)


def _home(tiny, tmp_path, **sleep):
    return Home.open(Home.init(tmp_path / "h", config=Config.model_validate(
        {"model": {"base": str(tiny)}, "sleep": sleep})))


def _expert(version, seed):
    """A LoRA expert with non-zero B (what training leaves), on `version`'s weights."""
    from peft import get_peft_model

    model, tok = load(version.weights)
    torch.manual_seed(seed)
    pm = get_peft_model(model, lora_config(SeedConfig(lora_r=4)))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return pm, tok


def _sleep(h, seed):
    parent = h.registry.current()
    pm, tok = _expert(parent, seed)
    ids = tok(["The user's dog is called Biscuit"], return_tensors="pt")
    with torch.no_grad():
        want = pm(**ids).logits
    v = publish(pm, tok, h.registry, {"parent": parent.name, "kind": "sleep"})
    return v, ids, want


def _size(d):
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def test_delta_versions_are_small_and_rebuild_exactly(tiny, tmp_path):
    base_bytes = sum(p.stat().st_size for p in tiny.glob("*.safetensors"))
    with _home(tiny, tmp_path, snapshot_every=3) as h:
        v1, ids, want = _sleep(h, 1)
        assert v1.manifest["storage"] == "delta" and not list(v1.path.glob("*.safetensors"))
        assert (v1.path / "adapter" / "adapter_model.safetensors").is_file()
        assert not list(v1.path.glob("tokenizer*"))  # a delta shares its snapshot's tokenizer
        assert _size(v1.path) <= 0.05 * base_bytes, (_size(v1.path), base_bytes)  # disk per night
        m, _ = load(v1.weights)  # served from the cache the publish seeded
        with torch.no_grad():
            assert torch.allclose(m(**ids).logits, want, atol=1e-4)
        v2, _, _ = _sleep(h, 2)
        v3, _, _ = _sleep(h, 3)
        assert [v.manifest["storage"] for v in (v2, v3)] == ["delta", "full"]  # every 3rd in a row is a snapshot
        assert list(v3.path.glob("*.safetensors"))
        v4, ids4, want4 = _sleep(h, 4)
        assert v4.manifest["storage"] == "delta" and h.registry.deltas_since_snapshot(v4.name) == 1
        # a rebuild from nothing cached: v2 from the base plus two deltas, v4 from the v3 snapshot plus one
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        for v in (v2, v4):
            sd = deltas.load_state(h.registry.materialise(v.name))
            assert deltas.digest(sd) == v.manifest["weights_sha256"]
        m4, _ = load(h.registry.get(v4.name).weights)
        with torch.no_grad():
            assert torch.allclose(m4(**ids4).logits, want4, atol=1e-4)
        rows = h.history()
        assert rows[-1]["layers"] == 3 and rows[1]["parameters"] == v1.manifest["parameters"]
        assert [r["storage"] for r in rows] == [None, "delta", "delta", "full", "delta"]


def test_rollback_rebuilds_and_checks_and_a_corrupt_delta_is_refused(tiny, tmp_path):
    with _home(tiny, tmp_path) as h:
        v1, _, _ = _sleep(h, 1)
        v2, _, _ = _sleep(h, 2)
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        back = h.rollback(v1.name)
        assert h.registry.current_name() == v1.name
        assert deltas.digest(deltas.load_state(back.weights)) == v1.manifest["weights_sha256"]
        # someone edits v2's adapter on disk: the rebuild no longer matches its manifest
        f = v2.path / "adapter" / "adapter_model.safetensors"
        from safetensors.torch import load_file, save_file

        sd = load_file(str(f))
        k = next(k for k in sd if "lora_B" in k)
        sd[k] = sd[k] + 1e-3
        save_file(sd, str(f))
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        with pytest.raises(RegistryError, match="do not match the checksum"):
            h.rollback(v2.name)
        assert h.registry.current_name() == v1.name  # CURRENT did not move
        assert not list((h.registry.root / deltas.CACHE_DIR).glob(".tmp-*"))
        assert h.ask("Hello", use_memory=False, max_new_tokens=2)["model_version"] == v1.name  # served, rebuilt


def test_snapshot_on_demand(tiny, tmp_path):
    with _home(tiny, tmp_path) as h:
        v1, _, _ = _sleep(h, 1)
        v2, _, _ = _sleep(h, 2)
        assert h.registry.deltas_since_snapshot(v2.name) == 2
        s1 = h.registry.snapshot(v1.name)
        assert s1.manifest["storage"] == "full" and (s1.path / "model.safetensors").is_file()
        assert (s1.path / "tokenizer.json").is_file() and h.registry.deltas_since_snapshot(v2.name) == 1
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        assert deltas.digest(deltas.load_state(s1.weights)) == v1.manifest["weights_sha256"]
        assert deltas.digest(deltas.load_state(h.registry.materialise(v2.name))) == v2.manifest["weights_sha256"]
        pm, tok = _expert(h.registry.current(), 9)  # and at publish time
        v3 = publish(pm, tok, h.registry, {"parent": v2.name, "kind": "sleep"}, snapshot=True)
        assert v3.manifest["storage"] == "full" and h.registry.deltas_since_snapshot(v3.name) == 0


def test_two_loaders_build_a_version_once(tiny, tmp_path):
    with _home(tiny, tmp_path) as h:
        v1, _, _ = _sleep(h, 1)
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        crashed = h.registry.root / deltas.CACHE_DIR / f".tmp-{v1.name}-999999999-0123abcd"  # a rebuilder killed mid-write
        crashed.mkdir(parents=True)
        out, errs = [], []

        def go():
            try:
                out.append(h.registry.get(v1.name).weights)
            except Exception as e:  # noqa: BLE001
                errs.append(e)
        ts = [threading.Thread(target=go) for _ in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert not errs and len(set(out)) == 1
        ready = json.loads((h.registry.root / deltas.CACHE_DIR / v1.name / deltas.READY).read_text())
        assert ready["weights_sha256"] == v1.manifest["weights_sha256"]
        assert not crashed.exists()


def test_grown_version_is_a_layer_map_and_prune_keeps_what_deltas_need(tiny, tmp_path):
    with _home(tiny, tmp_path) as h:
        m0, tok = load(str(tiny))
        ids = tok(["Hello there, my dog"], return_tensors="pt")
        with torch.no_grad():
            before = m0(**ids).logits
        g = h.grow(1)
        assert g.manifest["storage"] == "delta" and not list(g.path.glob("*.safetensors"))
        assert json.loads((g.path / deltas.DELTA_FILE).read_text())["layers"][-1] == ["copy", 2]
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        mg, _ = load(g.weights)
        assert mg.config.num_hidden_layers == 4
        with torch.no_grad():
            assert (mg(**ids).logits - before).abs().max().item() == 0.0
        assert h.history()[-1]["layers"] == 4
        v2, ids2, want2 = _sleep(h, 5)  # an expert on the grown model
        v3, _, _ = _sleep(h, 6)
        h.rollback("v0000")
        v4, _, _ = _sleep(h, 7)  # a branch from the base
        pruned = h.registry.prune(1)
        # v4 is current; v3 is the newest other version, kept with the deltas it is rebuilt from
        assert pruned == [] and set(h.registry.names()) == {"v0000", g.name, v2.name, v3.name, v4.name}
        h.rollback(v3.name)
        assert h.registry.prune(1) == [] and h.registry.prune(0) == []
        h.rollback(v2.name)
        assert h.registry.prune(1) == [v3.name]  # v4 (newest) needs only the base
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        m4, _ = load(h.registry.get(v4.name).weights)
        assert m4.config.num_hidden_layers == 3
        with torch.no_grad():
            assert torch.allclose(load(h.registry.get(v2.name).weights)[0](**ids2).logits, want2, atol=1e-4)


def test_full_copy_versions_of_old_homes_still_load(tiny, tmp_path):
    with _home(tiny, tmp_path) as h:
        model, tok = load(str(tiny))
        st = h.registry.new_staging()
        model.save_pretrained(str(st))
        tok.save_pretrained(str(st))
        old = h.registry.commit(st, {"parent": "v0000", "kind": "sleep"})  # no storage field: a full copy
        assert old.weights == str(old.path) and not old.is_delta
        v2, _, _ = _sleep(h, 8)  # a delta on top of the old full version rebuilds from it
        shutil.rmtree(h.registry.root / deltas.CACHE_DIR)
        assert deltas.digest(deltas.load_state(h.registry.materialise(v2.name))) == v2.manifest["weights_sha256"]
        assert h.registry.deltas_since_snapshot(v2.name) == 1


def test_an_adapter_the_merge_cannot_replay_is_stored_in_full(tiny, tmp_path):
    from peft import get_peft_model

    with _home(tiny, tmp_path) as h:
        model, tok = load(str(tiny))
        cfg = lora_config(SeedConfig(lora_r=4))
        cfg.use_dora = True  # DoRA rescales columns: not a sum of B @ A
        v = publish(get_peft_model(model, cfg), tok, h.registry, {"parent": "v0000", "kind": "sleep"})
        assert v.manifest["storage"] == "full" and v.weights == str(v.path)
        assert load(v.weights)[0].config.num_hidden_layers == 3


def test_a_cache_entry_a_kill_left_without_weights_is_rebuilt(tiny, tmp_path):
    """Deleting a cache entry removes its marker first; an entry that has the marker but lost its weights
    (a delete cut short before that order) is rebuilt, not served."""
    with _home(tiny, tmp_path) as h:
        v1, ids, want = _sleep(h, 1)
        _sleep(h, 2)
        entry = h.registry.root / deltas.CACHE_DIR / v1.name
        for f in entry.glob("*.safetensors"):
            f.unlink()
        assert (entry / deltas.READY).is_file()
        m, _ = load(h.registry.get(v1.name).weights)
        with torch.no_grad():
            assert torch.allclose(m(**ids).logits, want, atol=1e-4)
        assert deltas.evict(h.registry.root, drop={v1.name}) == [v1.name] and not entry.exists()


def test_rollback_to_a_version_with_a_broken_history_leaves_current_alone(tiny, tmp_path):
    with _home(tiny, tmp_path, snapshot_every=1) as h:  # full versions: each loads without its parent
        v1, _, _ = _sleep(h, 1)
        v2, _, _ = _sleep(h, 2)
        v3, _, _ = _sleep(h, 3)
        (v1.path / "manifest.json").unlink()  # v2's parent is gone (what an older prune could do)
        with pytest.raises(Exception):
            h.rollback(v2.name)
        assert h.registry.current_name() == v3.name  # not moved to a version whose history cannot be read


def test_the_gate_judges_a_16_bit_version_on_the_weights_it_will_store(tiny, tmp_path):
    """A bf16 version stores round(W + scale * B @ A): a small LoRA update is partly rounded away. The gate's
    "after" must be what is published and served, not the adapter beside the weights; and the weights
    come back as they were when the gate is done."""
    from agentsleep.sleep.gate import as_published

    model, tok = load(str(tiny))
    bf = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(str(bf))
    tok.save_pretrained(str(bf))
    with _home(bf, tmp_path) as h:
        parent = h.registry.current()
        pm, tok = _expert(parent, 5)  # loaded in float32 (the loader's default) from bf16 files
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.mul_(0.02)  # an update of the order of bf16's step
        ids = tok(["The user's dog is called Biscuit"], return_tensors="pt")
        assert deltas.stored_dtype(bf) == "BF16"
        with torch.no_grad():
            adapter = pm(**ids).logits
            with as_published(pm, deltas.stored_dtype(bf)):
                judged = pm(**ids).logits
            restored = pm(**ids).logits
        v = publish(pm, tok, h.registry, {"parent": parent.name, "kind": "sleep"})
        served, _ = load(v.weights)
        with torch.no_grad():
            want = served(**ids).logits
    assert torch.allclose(judged, want, atol=1e-5)
    assert not torch.allclose(adapter, want, atol=1e-4)  # the adapter alone is not what is served
    assert torch.equal(restored, adapter)
