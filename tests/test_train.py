"""The seeding loop on accelerate: the same expert from 1 or 2 processes, with or without accumulation/checkpointing."""
from pathlib import Path

import pytest
import torch

from agentsleep.config import SeedConfig
from agentsleep.errors import SleepError
from agentsleep.models.loader import load
from agentsleep.sleep import dream as dream_mod
from agentsleep.sleep.seed import seed
from agentsleep.sleep.types import Dream, Memory
from tiny import tiny_model_dir

MEM = [Memory("e1", "The user's dog is a beagle called Biscuit."),
       Memory("e2", "Project Falcon launches on 14 February 2027."),
       Memory("e3", "Maya's favourite tea is smoked lapsang souchong.")]
DREAMS = [Dream("e1", "What is the name of the dog?", "Biscuit"),
          Dream("e1", "Which breed is the user's dog?", "A beagle."),
          Dream("e2", "When does Project Falcon launch?", "14 February 2027"),
          Dream("e3", "Which tea does Maya like best?", "Smoked lapsang souchong.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


EARLIER = [Dream("old", "Where does my brother live?", "Vancouver", replay=True),
           Dream("old", "Which city is my aunt in?", "Porto", replay=True),
           Dream("old2", "What is my cat called?", "Miso", replay=True)]


def _expert(tiny, retain=(), **kw):
    model, tok = load(str(tiny))
    pool = [(dream_mod.student_prompt(tok, "What is the capital of France?"), "Paris is the capital."),
            (dream_mod.student_prompt(tok, "Name a colour."), "Blue.")]
    # batch 4 over 7 items: the last batch of each epoch has 3 items, so one of 2 processes gets 1 and
    # the other 2 (unequal shares: the loss normalisation must still give the 1-process gradient)
    # fp32 unless asked: the comparisons below are about summation order, not bf16 rounding
    cfg = SeedConfig(**{"epochs": 3, "min_steps": 0, "batch_size": 4, "lr": 5e-3, "mixed_precision": "no",
                        "min_dreams_per_episode": 0, "min_dreams_per_answer": 0, **kw})
    pm, stats = seed(model, tok, DREAMS, MEM, cfg, replay_pool=pool, retain=list(retain), source=str(tiny))
    lora = {k: v.detach().clone() for k, v in pm.named_parameters() if "lora_" in k}
    return lora, stats


def _max_diff(a, b):
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("average", ["token", "item"])
def test_two_cpu_processes_train_the_same_expert_as_one(tiny, average):
    # with both KL terms (generic replay, earlier facts' questions): the workers get the rows and draw the same ones
    one, s1 = _expert(tiny, EARLIER, sft_average=average)
    two, s2 = _expert(tiny, EARLIER, processes=2, sft_average=average)
    assert (s1.processes, s2.processes) == (1, 2)  # two processes really trained (DDP over gloo)
    assert {"replay_kl", "retain_kl"} <= set(s1.losses) and {"replay_kl", "retain_kl"} <= set(s2.losses)
    assert s1.steps == s2.steps == 6 and s1.tokens == s2.tokens
    moved = max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k)
    assert moved > 1e-3  # the expert did train
    assert _max_diff(one, two) < 1e-4  # measured 1.3e-6: float summation order only
    assert abs(s1.losses["total"][-1] - s2.losses["total"][-1]) < 1e-4 and abs(s1.losses["sft"][-1] - s2.losses["sft"][-1]) < 1e-4


def test_item_average_counts_each_item_once_whatever_its_length():
    from agentsleep.sleep.tensors import ce_picked

    torch.manual_seed(0)
    sel, tgt = torch.randn(5, 11), torch.tensor([1, 2, 3, 4, 5])
    rows = torch.tensor([0, 1, 1, 1, 1])  # a one-token answer and a four-token one
    ce = torch.nn.functional.cross_entropy(sel, tgt, reduction="none")
    assert torch.allclose(ce_picked(sel, tgt, "item_sum", rows, 2), ce[0] + ce[1:].mean())
    assert torch.allclose(ce_picked(sel, tgt, "sum"), ce.sum())  # the token sum weighs them 1:4
    assert not torch.allclose(ce.sum() / 5, (ce[0] + ce[1:].mean()) / 2)
    assert float(ce_picked(sel[:0], tgt[:0], "item_sum", rows[:0], 2)) == 0.0


def test_the_seeding_loop_reads_sft_average(tiny):
    item, _ = _expert(tiny, sft_average="item", w_replay=0)
    token, _ = _expert(tiny, sft_average="token", w_replay=0)
    assert _max_diff(item, token) > 1e-5  # the answers differ in length, so the two averages train differently


def test_bf16_autocast_on_cpu_trains_the_same_expert_within_rounding(tiny):
    fp32, _ = _expert(tiny, w_replay=0)
    bf16, s = _expert(tiny, w_replay=0, mixed_precision="bf16")
    assert s.losses["sft"][-1] < s.losses["sft"][0]  # it learns
    b32, b16 = (torch.cat([v.flatten() for k, v in sorted(e.items()) if "lora_B" in k]) for e in (fp32, bf16))
    assert _max_diff(fp32, bf16) > 0  # bf16 really ran (not bit-equal) ...
    assert float(torch.nn.functional.cosine_similarity(b32, b16, dim=0)) > 0.9  # ... and learned the same update


def test_accumulation_and_checkpointing_keep_the_result(tiny):
    # no replay term: its samples are drawn per micro-batch, so the two runs would rehearse different rows
    base, s = _expert(tiny, batch_size=2, epochs=2, grad_accum=2, w_replay=0)  # steps: ceil(4 micro * 2 / 2) = 4
    big, s_big = _expert(tiny, batch_size=4, epochs=2, w_replay=0)
    assert s.steps == s_big.steps == 4
    # 2 micro-batches of 2 accumulate to exactly one batch of 4 (the loss is normalised per optimizer step)
    assert _max_diff(base, big) < 1e-5
    ckpt, _ = _expert(tiny, batch_size=2, epochs=2, grad_accum=2, w_replay=0, gradient_checkpointing=True)
    assert _max_diff(base, ckpt) < 1e-5


def test_workers_need_a_source_and_report_failures(tiny):
    model, tok = load(str(tiny))
    with pytest.raises(SleepError, match="needs the weights' directory"):
        seed(model, tok, DREAMS, MEM, SeedConfig(epochs=1, processes=2))
    with pytest.raises(SleepError, match=r"seeding workers .* failed with exit code .*ModelError: model .*missing") as e:
        seed(model, tok, DREAMS, MEM, SeedConfig(epochs=1, processes=2), source=str(tiny / "missing"))
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)
    assert torch.is_grad_enabled()


def test_the_workers_job_is_written_in_the_sleeps_scratch_folder(tiny, tmp_path):
    """The job file holds the night's dreams: inside a sleep it goes to the sleep's folder in the home (removed
    with it), and a failed run's log stays beside it, never in the system temp folder."""
    from agentsleep.sleep import scratch

    model, tok = load(str(tiny))
    sleep_dir = tmp_path / "sleeps" / "s1"
    with scratch.in_folder(sleep_dir / "scratch") as here:
        assert Path(scratch.temporary_directory("x-").name).parent == here
        with pytest.raises(SleepError, match="failed") as e:
            seed(model, tok, DREAMS, MEM, SeedConfig(epochs=1, processes=2), source=str(tiny / "missing"))
    logs = list(sleep_dir.glob("seed-workers-*.log"))
    assert len(logs) == 1 and str(logs[0]) in str(e.value) and not (sleep_dir / "scratch").exists()
    assert scratch.folder() is None and scratch.sweep(tmp_path) == []


def test_small_sleeps_get_at_least_min_steps(tiny):
    """A sleep with few items trains for seed.min_steps optimizer steps (extra epochs), not for a handful."""
    _, few = _expert(tiny, epochs=1, min_steps=5, w_replay=0)  # 7 items, batch 4: 2 steps an epoch -> 3 epochs
    assert few.steps == 6
    _, many = _expert(tiny, epochs=4, min_steps=5, w_replay=0)  # already above the floor: unchanged
    assert many.steps == 8


def test_raw_text_starts_with_bos_where_the_tokenizer_always_adds_one(tiny):
    """Raw memory text is trained with no prompt: a Llama or Gemma tokenizer starts every text with BOS, and
    training without it is far out of their distribution. SmolLM2 adds none and is unchanged."""
    from transformers import AutoTokenizer

    from agentsleep.sleep.tensors import bos_ids, encode

    smol = AutoTokenizer.from_pretrained(str(tiny))
    ids, labels = encode(smol, "", "The shed key is blue.")
    assert bos_ids(smol) == [] and ids == smol("The shed key is blue." + smol.eos_token)["input_ids"]

    class LlamaLike:  # what a BOS-adding tokenizer answers (a plain callable: the pure function under test)
        bos_token_id, eos_token = 1, "</s>"

        def __call__(self, text, add_special_tokens=True):
            body = [100 + ord(c) for c in text.replace("</s>", "\0")]
            return {"input_ids": ([1] if add_special_tokens else []) + [2 if x == 100 else x for x in body]}

    tok = LlamaLike()
    ids, labels = encode(tok, "", "ab")
    assert ids == [1, 197, 198, 2] and labels == [-100, 197, 198, 2]
    ids, labels = encode(tok, "Q", "ab")  # a prompt carries its own (templates write it as text)
    assert ids == [181, 197, 198, 2] and labels == [-100, 197, 198, 2]


def test_the_kl_terms_drawn_together_equal_each_drawn_alone(tiny):
    """Replay and retain rows share one teacher and one student forward: each term's sum, positions and
    label count are what it gives alone (padding among other rows changes nothing)."""
    import random

    from peft import get_peft_model

    from agentsleep.sleep.objective import SeedStats, lora_config
    from agentsleep.sleep.tensors import encode
    from agentsleep.sleep.train import Student, _Loop, accelerator

    model, tok = load(str(tiny))
    cfg = SeedConfig(mixed_precision="no")
    pm = get_peft_model(model, lora_config(cfg))
    torch.manual_seed(0)
    for name, p in pm.named_parameters():
        if "lora_B" in name:  # a student that differs from its parent
            p.data.normal_(0, 0.05)
    row = lambda q, a: encode(tok, dream_mod.student_prompt(tok, q), a, 64)  # noqa: E731
    replay = [row("Name a colour and say why you like it.", "Blue, because the sea is blue and calm."),
              row("What is the capital of France?", "Paris."), row("Count to three.", "One, two, three.")]
    retain = [row(d.question, d.answer) for d in EARLIER]
    loop = _Loop(pm, tok, cfg, accelerator(cfg, torch.device("cpu")), Student(pm), {}, SeedStats(), replay, retain,
                 None, random.Random(0), torch.device("cpu"), random.Random(1))
    draw = lambda name, pool, seed: (name, pool, 2, 1.5, random.Random(seed))  # noqa: E731
    with torch.no_grad():
        both = loop.kl_terms([draw("replay_kl", replay, 5), draw("retain_kl", retain, 6)])
        alone = loop.kl_terms([draw("replay_kl", replay, 5)]) + loop.kl_terms([draw("retain_kl", retain, 6)])
    assert [t[0] for t in both] == ["replay_kl", "retain_kl"]
    for (n1, w1, kl1, pos1, lab1), (n2, w2, kl2, pos2, lab2) in zip(both, alone):
        assert (n1, w1, pos1, lab1) == (n2, w2, pos2, lab2) and pos1 > 0
        assert float(kl1) > 1e-6 and abs(float(kl1) - float(kl2)) < 1e-4 * max(1.0, float(kl2))
    assert loop.kl_terms([]) == []
    from types import SimpleNamespace

    def on_process(rank, world):  # what one of `world` data-parallel processes sums
        loop.acc = SimpleNamespace(process_index=rank, num_processes=world)
        with torch.no_grad():
            return loop.kl_terms([draw("replay_kl", replay, 5), draw("retain_kl", retain, 6)])
    halves = [on_process(r, 2) for r in (0, 1)]  # the two shares add up to the whole, labels counted over all rows
    for whole, a, b in zip(both, *halves):
        assert abs(float(a[2]) + float(b[2]) - float(whole[2])) < 1e-4 * max(1.0, float(whole[2]))
        assert a[3] + b[3] == whole[3] and a[4] == b[4] == whole[4]
    for (name, _, kl, pos, labels), whole in zip(on_process(2, 3), both):  # no row of its own: joins with 0
        assert float(kl) == 0.0 and pos > 0 and labels == whole[4], name
