"""The benchmark report writer: generated blocks in docs/BENCHMARKS.md, plots, bad suite names."""
from agentsleep.bench import report
from agentsleep.bench.ablation_suite import markdown as ablation_md
from agentsleep.bench.faults_suite import markdown as faults_md
from agentsleep.bench.sleep_suite import markdown as sleep_md
from cli_helpers import run_cli


def _sleep_res(n=20):
    s = {"status": "promoted", "metrics": {"drift_kl": 0.05, "recall_before": 0.1, "recall_after": 0.8,
                                           "seed_tokens_per_s": 140.2, "seconds_per_episode": 17.0,
                                           "peak_rss_mb": {"dream": 1900.0, "seed": 2650.4}},
         "dreams": {"written": 120, "trained": 70}, "timings": {"dream": 90.0, "seed": 250.0}}
    return {"facts_per_sleep": n, "a_before": 0.0, "a_with_context": 0.95, "a_plain_lora": 0.55, "a_after_sleep1": 0.8,
            "b_after_sleep2": 0.75, "a_after_sleep2": 0.75, "a_retention": 0.938, "baseline_steps": 54,
            "sleep1": s, "sleep2": s, "sleep1_seconds": 500.0,
            "naive": [{"after_set": 1, "accuracy": [0.55], "drift_kl": 0.2},
                      {"after_set": 2, "accuracy": [0.3, 0.6], "drift_kl": 0.41}], "sleep2_seconds": 520.0,
            "targets": {"a_after_sleep1 >= 0.75": True, "sleep under 600 s": True}}


def test_blocks_are_replaced_not_duplicated(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nHand-written intro stays.\n")
    report.update_doc(doc, "sleep", sleep_md(_sleep_res(), tmp_path), "## Sleep\n\n_run 1_")
    report.update_doc(doc, "faults", faults_md({"rows": [{"fault": "kill -9 during seed", "survived": True, "problems": [], "note": ""}],
                                                "faults_injected": 1, "survived": 1, "episodes_lost": 0, "recovered": True}), "## Faults")
    report.update_doc(doc, "sleep", sleep_md(_sleep_res(), tmp_path), "## Sleep\n\n_run 2_")
    text = doc.read_text()
    assert "Hand-written intro stays." in text and text.count("<!-- bench:sleep -->") == 1
    assert "_run 2_" in text and "_run 1_" not in text and "| kill -9 during seed | yes |" in text
    assert "- [x] a_after_sleep1 >= 0.75" in text and "| closed-book after sleep 1 | 0.80 |" in text
    assert "Seeding 140.2 tokens/s; 17.0 s per episode; peak RSS after each stage (MB): dream 1900, seed 2650." in text
    assert "| naive continual FT: set B / set A after the second LoRA | 0.60 / 0.30 |" in text
    assert (tmp_path / "bench_sleep.png").stat().st_size > 1000
    sleep_md(_sleep_res(10), tmp_path)
    assert (tmp_path / "bench_sleep_10.png").is_file()  # the quick profile's plot never overwrites the full one


def test_ablation_table():
    md = ablation_md({"facts": 20, "dreams_trained": 70, "rows": [
        {"variant": "dreams + raw text (default)", "closed_book": 0.75, "drift_kl": 0.06, "steps": 54, "seconds": 246}]})
    assert "| dreams + raw text (default) | 0.75 | 0.060 | 54 | 246 |" in md


def test_unknown_suite_is_one_line_error(tmp_path):
    assert "unknown suite 'nope'" in run_cli("bench", "nope", home=tmp_path / "h").one_line_error()


def test_a_development_set_is_checked_before_any_suite_runs(tmp_path):
    """A wrong --dev-set fails at once, not hours into `bench all`; it only goes with --dev and nights."""
    err = run_cli("bench", "all", "--dev", "--dev-set", "weekly", home=tmp_path / "h").one_line_error()
    assert "--dev-set must be one of bench, everyday, got 'weekly'" in err
    err = run_cli("bench", "phrasing", "--dev", "--dev-set", "everyday", home=tmp_path / "h").one_line_error()
    assert "--dev-set goes with --dev and the nights suite" in err
    assert "--dev-set goes with" in run_cli("bench", "nights", "--dev-set", "everyday", home=tmp_path / "h").one_line_error()


def test_a_test_set_is_checked_before_any_suite_runs(tmp_path):
    """--test-set names a held-out phrasing set: a wrong name, --dev or another suite fail at once."""
    for args in (("phrasing", "--test-set", "c"), ("phrasing", "--dev", "--test-set", "b"),
                 ("nights", "--test-set", "b")):
        err = run_cli("bench", *args, home=tmp_path / "h").one_line_error()
        assert "--test-set goes with the phrasing suite without --dev: use a, b" in err, args


def test_retrieval_suite_small(tmp_path):
    """The latency suite end to end on a small embedded store: rows per size, sane percentiles, a plot."""
    from agentsleep.bench import retrieval_suite

    res = retrieval_suite.run(tmp_path / "r", sizes=(100, 300), backends=("embedded",), queries=12, unique=50,
                              say=lambda m: None)
    assert [r["episodes"] for r in res["rows"]] == [100, 300]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in res["rows"])
    md = retrieval_suite.markdown(res, tmp_path)
    assert "| embedded | 300 |" in md and (tmp_path / "bench_retrieval.png").stat().st_size > 1000


def test_squad_suite_runs_every_method(tmp_path, monkeypatch):
    """The SQuAD suite end to end on a tiny random model and one passage in the dataset's format: a home
    told the passage as a document, one real sleep, every baseline scored per seed, gains and targets,
    a table; a missing dataset is a clean skip."""
    import json

    from agentsleep.bench import squad_suite
    from agentsleep.sleep import dream as dream_mod
    from tiny import grounded_writer, tiny_model_dir

    monkeypatch.setattr(dream_mod, "write", grounded_writer)  # a random tiny model writes no usable question
    passage = {"title": "Beagle", "context": "The beagle is a breed of small scent hound. Beagles were developed in "
               "England around the 1830s for hunting hare. The breed is known for its loud bay and its stamina.",
               "questions": [{"question": q, "answer": a} for q, a in [
                   ("What kind of dog is a beagle?", "scent hound"), ("Where were beagles developed?", "England"),
                   ("When were beagles developed?", "1830s"), ("What did beagles hunt?", "hare"),
                   ("What is the breed known for?", "its loud bay")]]}
    data = tmp_path / "squad.json"
    data.write_text(json.dumps([passage, {**passage, "title": "Other"}]))
    res = squad_suite.run(tmp_path / "s", passages=1, seeds=2, say=lambda m: None, data=data,
                          model_path=str(tiny_model_dir(tmp_path)))
    assert res["passages"] == 1 and res["questions"] == 5 and len(res["runs"]) == 2
    for r in res["runs"]:
        assert all(0 <= r[k] <= 1 for k in ("before", "in_context", "sleep", "plain_lora", "same_dreams_sft"))
        assert len(r["plain_lora_by_lr"]) == 3 and r["status"] in ("promoted", "rejected")
    home = tmp_path / "s" / "seed0"
    from agentsleep.home import Home

    with Home.open(home) as h:  # the passage was remembered once for its five questions
        assert [(e.kind, e.text) for e in h.store.list()] == [("fact", passage["context"])]
    assert set(res["targets"]) == {"sleep_gain_at_least_0.10", "sleep_gain_at_least_1.5x_best_plain_lora"}
    md = squad_suite.markdown(res)
    assert "| plain LoRA on raw passages (best of 3 lr) |" in md and "| sleep (default config) |" in md
    assert squad_suite.run(tmp_path, data=tmp_path / "none.json", say=lambda m: None) == {"skipped": "dataset not found"}


def test_scaling_suite_times_dream_and_seed(tmp_path):
    """The scaling suite with the real stage code on a tiny model: a row per episode count, and its table."""
    from agentsleep.bench import scaling_suite
    from tiny import tiny_model_dir

    res = scaling_suite.run(models=(str(tiny_model_dir(tmp_path)),), episodes=(2, 4), say=lambda m: None)
    assert [r["episodes"] for r in res["rows"]] == [2, 4]
    small, big = res["rows"]
    from agentsleep.config import SeedConfig

    assert small["seed_steps"] == SeedConfig().min_steps  # a small sleep trains to the step floor
    assert big["dreams_written"] > small["dreams_written"] and big["seed_tokens_per_s"] > 0
    assert all(r["seed_s"] > 0 and r["dream_s"] > 0 and r["weights"] == "real" for r in res["rows"])
    assert "| episodes per 8 h night |" in scaling_suite.markdown(res)
    assert all(r["batch_size"] == 8 and r["gradient_checkpointing"] is False and r["gpu_peak_gib"] is None
               for r in res["rows"])  # the configured seed settings; no GPU here
    facts = scaling_suite.synthetic_facts(300)
    assert len({t for t, _ in facts}) == 300 and all(len(qa) == 5 for _, qa in facts)


def test_scaling_suite_variants_and_failed_rows(tmp_path):
    """--batch-size/--gradient-checkpointing give a row per combination on one dream; keep_going records a
    failing row (a model that cannot be loaded) and goes on."""
    from agentsleep.bench import scaling_suite
    from tiny import tiny_model_dir

    res = scaling_suite.run(models=(str(tmp_path / "missing"), str(tiny_model_dir(tmp_path))), episodes=(2,),
                            batch_sizes=(4,), checkpointing=(True, False), say=lambda m: None, keep_going=True)
    bad, on, off = res["rows"]
    assert "error" in bad and bad["model"] == "missing"
    assert (on["batch_size"], on["gradient_checkpointing"], off["gradient_checkpointing"]) == (4, True, False)
    assert on["dream_s"] == off["dream_s"] and on["seed_steps"] == off["seed_steps"] > 0
    md = scaling_suite.markdown(res)
    assert "| missing | - | - | - | failed: " in md and "| 4 | on | 2 |" in md and "| 4 | off | 2 |" in md


def test_scaling_renders_old_results_and_merges_runs(tmp_path):
    """Result files from before the memory/batch columns still render ('-'), and --from-json a,b merges runs:
    a row without its own batch size takes its run's."""
    import json
    import sys

    import pytest

    from agentsleep.bench import scaling_suite

    row = {"model": "qwen2.5-7b", "params_m": 7616, "weights": "shape only", "dtype": "bfloat16", "episodes": 20,
           "dream_s": 10.3, "dreams_written": 120, "seed_s": 51.5, "seed_steps": 90, "seed_tokens_per_s": 696.3,
           "s_per_episode": 3.09}
    old = {"device": "GPU X", "config": {"epochs": 6, "batch_size": 8, "lora_r": 16, "dreams_per_episode": 6},
           "date": "2026-11-26", "rows": [row], "note": "first run"}
    assert "| qwen2.5-7b (7616M, shape only) | 8 | - | 20 | 10.3 | 51.5 | 696.3 | 3.09 | - | 9320 |" \
        in scaling_suite.markdown(old)
    new = {**old, "date": "2026-11-27", "note": None,
           "rows": [{**row, "batch_size": 8, "gradient_checkpointing": True, "gpu_peak_gib": 16.5}]}
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    docs = tmp_path / "BENCHMARKS.md"
    argv = sys.argv
    sys.argv = ["scaling_suite", "--from-json", f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", "--docs", str(docs)]
    try:
        scaling_suite.main()
    finally:
        sys.argv = argv
    text = docs.read_text()
    assert "<!-- bench:scaling-gpu -->" in text and "2026-11-26, 2026-11-27" in text and "First run." in text
    assert "| 8 | - | 20 |" in text and "| 8 | on | 20 | 10.3 | 51.5 | 696.3 | 3.09 | 16.5 | 9320 |" in text
    with pytest.raises(SystemExit):
        scaling_suite.merge([old, {**new, "device": "GPU Y"}])


def test_scaling_shapes_are_buildable():
    """Every published shape the GPU run uses makes a model config (checked here at a tiny width)."""
    from transformers import AutoConfig

    from agentsleep.bench.scaling_suite import SHAPES

    for name, shape in SHAPES.items():
        s = dict(shape)
        cfg = AutoConfig.for_model(s.pop("model_type"), **s)
        assert cfg.hidden_size % cfg.num_attention_heads == 0, name
    assert SHAPES["llama-3.1-8b"]["rope_parameters"]["rope_theta"] == 500000.0


def test_continual_suite_lines_and_capacity_table(tmp_path, monkeypatch):
    """K=2 sleeps of 2 facts on a tiny model: the three lines, growth adds a block, a table and a plot.
    No sleep can be promoted (the tiny random model writes no parseable dreams, and the gate is set so that
    no expert could pass it either: no drift allowed, every probe to be learned), so every sleep must be
    rejected and leave its version serving, and the report must say why."""
    from agentsleep.bench import continual_suite
    from tiny import tiny_model_dir

    for k, v in {"MODEL__BASE": str(tiny_model_dir(tmp_path)), "SLEEP__SEED__EPOCHS": "2", "SLEEP__REST__ROUNDS": "0",
                 "SLEEP__GATE__MIN_RECALL_GAIN": "1", "SLEEP__GATE__MAX_DRIFT_KL": "0"}.items():
        monkeypatch.setenv(f"AGENTSLEEP_{k}", v)
    res = continual_suite.run(tmp_path / "c", n_facts=2, k=2, say=lambda m: None)
    lines = res["lines"]
    assert set(lines) == {"sleep", "sleep + growth", "naive fine-tuning"}
    assert all([p["after_set"] for p in pts] == [1, 2] for pts in lines.values())
    assert all(len(p["accuracy"]) == p["after_set"] for pts in lines.values() for p in pts)
    assert lines["sleep"][0] == {k: v for k, v in lines["sleep + growth"][0].items() if k != "grow_seconds"}
    grown, plain = lines["sleep + growth"][1], lines["sleep"][1]
    assert grown["parameters_m"] > plain["parameters_m"] and grown["grow_seconds"] > 0
    slept = lines["sleep"] + lines["sleep + growth"][1:]
    assert [p["status"] for p in slept] == ["rejected"] * 3
    assert all(p["reasons"] for p in slept), slept
    # a rejected sleep leaves the version before it serving: the base, or the grown one on the growth line
    assert [p["version"] for p in lines["sleep"]] == ["v0000", "v0000"] and grown["version"] == "v0001"
    md = continual_suite.markdown(res, tmp_path)
    assert "| sleep + growth | 2 | rejected (4) |" in md and (tmp_path / "bench_continual.png").stat().st_size > 1000
    notes = md.split("Not promoted:")[1]
    for p in slept:
        assert f"sleep {p['after_set']}: rejected: {'; '.join(p['reasons'])}" in notes
    assert "| naive fine-tuning | 2 | merged |" in md


def test_continual_report_says_nothing_when_every_sleep_promoted(tmp_path):
    from agentsleep.bench.continual_suite import markdown

    pt = {"after_set": 1, "accuracy": [0.8], "recall_all": 0.8, "drift_kl": 0.05, "seconds": 10.0,
          "status": "promoted", "reasons": ["recall 0.00 -> 0.80, retention n/a, drift KL 0.050"], "version": "v0001"}
    res = {"k": 1, "facts_per_sleep": 10, "before": [0.0], "seed_steps_per_baseline_set": 48,
           "lines": {"sleep": [pt], "sleep + growth": [pt], "naive fine-tuning": [
               {"after_set": 1, "accuracy": [0.5], "recall_all": 0.5, "drift_kl": 0.2}]}}
    md = markdown(res, tmp_path)
    assert "| sleep | 1 | promoted |" in md and "Not promoted" not in md


def test_results_file_records_versions_config_and_seeds_without_secrets(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("AGENTSLEEP_SERVE__API_KEY", "s3cret-key")
    monkeypatch.setenv("AGENTSLEEP_SLEEP__SEED__SEED", "7")
    p = report.save({"a": 1}, tmp_path, "x")
    res = json.loads(p.read_text())
    assert res["a"] == 1 and "CPU cores" in res["machine"]
    assert {"python", "torch", "transformers", "peft", "chromadb"} <= set(res["versions"])
    assert res["config"]["sleep"]["seed"]["seed"] == 7 and "dream" in res["config"]["sleep"]
    assert res["config"]["serve"]["api_key"] == "***" and "s3cret" not in p.read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    res = json.loads(report.save({"config": {}}, tmp_path, "y").read_text())  # a suite's own overrides are kept
    assert res["config"] == {} and res["home_config"]["sleep"]["seed"]["seed"] == 7


def test_one_sleep_quick_result_renders_and_keeps_its_own_block(tmp_path):
    from agentsleep.bench import QUICK_OPTIONS
    from agentsleep.bench.sleep_suite import targets

    res = _sleep_res(10)
    for k in ("sleep2", "sleep2_seconds", "b_after_sleep2", "a_after_sleep2", "a_retention"):
        res.pop(k)
    res["naive"] = res["naive"][:1]
    res["targets"] = targets(res)
    assert set(res["targets"]) == {"a_after_sleep1 >= 0.75", "sleep beats plain LoRA by >= 0.15",
                                   "sleep under 600 s", "drift within gate bound"}
    md = sleep_md(res, tmp_path)
    assert "sleep 1 status / seconds | promoted / 500" in md and "sleep 2" not in md.split("Targets")[0]
    assert (tmp_path / "bench_sleep_10.png").stat().st_size > 1000
    assert QUICK_OPTIONS["sleep"] == {"n_facts": 10, "sleeps": 1}


def test_serve_table_splits_the_hold_into_drain_and_swap():
    """The serve block shows what a client waited for at each swap: requests in flight finishing on
    the old weights, then the swap itself, and the work done before the hold."""
    from agentsleep.bench.serve_suite import markdown

    res = {"backends": {
        "vllm": {"requests": 9, "failed": 0, "swaps": [
            {"kind": "reload_weights", "pause_ms": 250.5, "drain_ms": 200.25, "prepare_s": 8.5, "client_max_ms": 900.0},
            {"kind": "adapter", "pause_ms": 0.02, "drain_ms": 0.0, "prepare_s": 0.1, "client_max_ms": 30.0}]},
        "transformers": {"skipped": "not asked for"}}}
    md = markdown(res)
    assert "| vllm | 9 | 0 | reload_weights | 250.5 | 200.25 | 50.25 | 8.5 | 900.0 |" in md
    assert "| vllm | 9 | 0 | adapter | 0.02 | 0.0 | 0.02 | 0.1 | 30.0 |" in md
    assert "| transformers | - | - | skipped: not asked for |" in md
