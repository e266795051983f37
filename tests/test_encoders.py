"""The store's sentence encoder: the ONNX fast path gives sentence-transformers' vectors, a cold CLI
`remember`/`recall` never imports torch, and a model the fast path cannot take still works."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from agentsleep.memory.embedder import embedded_model_path
from agentsleep.memory.encoders import OnnxEncoder, SentenceTransformerEncoder, encoder, onnx_path, onnx_settings

TEXTS = ["My manager is Ana.", "ok", "Nous avons déménagé de Porto à Lisbonne en mai.",
         "私の犬の名前はポチです。", "Мой врач доктор Иванов.", "word " * 400]  # the last is cut at 256 tokens


def test_onnx_encoder_gives_sentence_transformers_vectors():
    path = embedded_model_path()
    assert onnx_settings(path) == {"max_len": 256}
    fast = encoder(path)
    assert isinstance(fast, OnnxEncoder) and onnx_path(path).is_file()
    got = fast.encode(TEXTS, batch_size=4)  # two batches, padded differently
    ref = SentenceTransformerEncoder(path).encode(TEXTS)
    assert got.shape == ref.shape == (len(TEXTS), 384)
    assert np.abs(got - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_models_the_fast_path_cannot_take_use_sentence_transformers(tmp_path):
    assert onnx_settings(str(tmp_path)) is None  # no sentence-transformers files at all
    src = embedded_model_path()
    for name in os.listdir(src):
        if os.path.isfile(os.path.join(src, name)):
            os.symlink(os.path.join(src, name), tmp_path / name)
    (tmp_path / "1_Pooling").mkdir()
    pooling = json.loads(open(os.path.join(src, "1_Pooling", "config.json")).read())
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode_mean_tokens": False,
                                                                   "pooling_mode_cls_token": True}))
    assert onnx_settings(str(tmp_path)) is None  # CLS pooling: not what the ONNX encoder computes


@pytest.mark.timeout(300)
def test_a_cold_cli_remember_and_recall_never_import_torch(tmp_path):
    encoder(embedded_model_path())  # the export is cached (made once per machine, in a child process)
    home = tmp_path / "home"
    code = (
        "import sys, json\n"
        "from agentsleep.cli import app\n"
        "for args in (['init'], ['remember', 'My bike is a red Brompton.'], ['recall', 'what bike do I ride', '--json']):\n"
        f"    try: app(['--home', {str(home)!r}, *args], standalone_mode=False)\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "print('HEAVY', json.dumps(heavy))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Brompton" in r.stdout
    assert 'HEAVY []' in r.stdout, r.stdout[-500:]
