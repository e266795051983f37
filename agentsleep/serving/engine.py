"""The in-process backend: one loaded model version, swapped atomically.

`swap()` loads the new version completely before replacing the reference
that requests read, so requests in flight finish on the old weights and new
ones start on the new weights; nobody waits on a half-loaded model. The
switch itself is one reference assignment (microseconds); the load happens
off the request path.

Besides the simple `answer()`/`complete()` used by `Home.ask`, the engine
generates for the OpenAI endpoint: `generate()` (one prompt, sampling
parameters, stop strings, token counts, finish reason) and `stream()` (text
deltas as tokens are produced).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..config import ModelConfig
from ..models import generate as gen
from ..errors import ModelError
from ..models.loader import load, resolve
from ..models.registry import Version
from .backend import BadRequest, SwapReport


@dataclass(frozen=True)
class Loaded:
    version: Version
    model: Any
    tok: Any
    tok_lock: Any = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def context_length(self) -> int:
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if n else 2048


@dataclass
class GenParams:
    max_tokens: int | None = None  # the client's: a prompt that leaves less room is refused
    default_max_tokens: int | None = None  # used when max_tokens is None (else model.max_new_tokens): shrinks to fit
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str      # "stop" | "length"
    version: str


class _Cancel:
    """A stopping criterion that ends generation when the client goes away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Engine:
    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self._live: Loaded | None = None
        self._gen_lock = threading.Lock()  # torch generate is not re-entrant on one model
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.last_swap: SwapReport | None = None
        self._tok_fp: str | None = None

    @property
    def version(self) -> Version | None:
        return self._live.version if self._live else None

    @property
    def live(self) -> Loaded:
        if self._live is None:
            raise RuntimeError("engine has no model loaded; call swap(version) first")
        return self._live

    def swap(self, version: Version) -> Loaded:
        """Load `version` fully, then make it live in one reference assignment."""
        with self._swap_lock:
            t0 = time.perf_counter()
            live = self._live
            prev = live.version.name if live else None
            if prev == version.name:  # versions are immutable: the watcher and a rollback may both ask for it
                return live
            src = resolve(version.weights, progress=lambda m: None)
            fp = tokenizer_fingerprint(src)
            if live is not None and fp and fp == self._tok_fp:
                # same tokenizer files: reuse it (loading one is most of a small model's swap time)
                model = _load_model(src, self.cfg)
                model.generation_config.pad_token_id = live.tok.pad_token_id
                loaded = Loaded(version, model, live.tok, live.tok_lock)
            else:
                model, tok = load(src, dtype=self.cfg.dtype, device=self.cfg.device)
                loaded = Loaded(version, model, tok)
            t1 = time.perf_counter()
            self._live = loaded
            t2 = time.perf_counter()
            del live  # the old model is freed after the switch (by the last request using it)
            self._tok_fp = fp
            self.swaps += 1
            self.last_swap = SwapReport(version=version.name, previous=prev, kind="load" if prev else "start",
                                        pause_ms=(t2 - t1) * 1000, prepare_s=t1 - t0, total_s=t2 - t0)
            return loaded

    # -- simple helpers used by Home.ask ------------------------------------
    def complete(self, prompts: list[str], *, max_new_tokens: int | None = None) -> tuple[list[str], str]:
        """Raw completions of rendered prompts, and the version that produced them."""
        live = self.live
        with self._gen_lock:
            out = gen.generate(live.model, live.tok, prompts, max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)
        return out, live.version.name

    def answer(self, question: str, memories: list[str] | None = None, *,
               max_new_tokens: int | None = None) -> tuple[str, str]:
        """The answer to `question` in the answer layout, and the version that gave it (a swap may
        replace the live version at any moment: the name is read from the model that answered)."""
        live = self.live
        prompt = gen.chat(live.tok, question, system=gen.answer_system(memories or []))
        with self._gen_lock:
            text = gen.generate(live.model, live.tok, [prompt], max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)[0]
        return text, live.version.name

    # -- the OpenAI endpoint's generation -------------------------------------
    def render_chat(self, messages: list[dict[str, Any]], live: Loaded | None = None) -> str:
        live = live or self.live
        try:
            return gen.render_messages(live.tok, messages)
        except Exception as e:  # noqa: BLE001 - template errors are the caller's input
            raise BadRequest(f"messages: cannot apply the chat template ({type(e).__name__}: {e})",
                             param="messages") from None

    def _prepare(self, live: Loaded, prompt: str, p: GenParams) -> tuple[Any, int]:
        import torch

        with live.tok_lock:  # fast tokenizers are not safe to call from several threads at once
            ids = live.tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n = int(ids.shape[1])
        ctx = live.context_length
        if n == 0:
            raise BadRequest("the prompt is empty", param="prompt")
        if n >= ctx:
            raise BadRequest(f"This model's maximum context length is {ctx} tokens, and the prompt has {n}. "
                             "Shorten the prompt.", code="context_length_exceeded", param="messages")
        want = p.max_tokens if p.max_tokens is not None else min(p.default_max_tokens or self.cfg.max_new_tokens,
                                                                 ctx - n)
        if n + want > ctx:
            raise BadRequest(f"This model's maximum context length is {ctx} tokens. However, you requested "
                             f"{n + want} tokens ({n} in the prompt, {want} in the completion). "
                             "Shorten the prompt or lower max_tokens.", code="context_length_exceeded",
                             param="messages")
        p.max_tokens = want
        device = next(live.model.parameters()).device
        return torch.as_tensor(ids).to(device), n

    def _gen_kwargs(self, live: Loaded, p: GenParams, cancel: _Cancel) -> dict[str, Any]:
        from transformers import StoppingCriteriaList

        kw: dict[str, Any] = dict(max_new_tokens=p.max_tokens, pad_token_id=live.tok.pad_token_id,
                                  stopping_criteria=StoppingCriteriaList([cancel]), top_k=None)
        if p.temperature and p.temperature > 0:
            kw.update(do_sample=True, temperature=p.temperature, top_p=p.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None)
        if p.stop:
            kw.update(stop_strings=list(p.stop), tokenizer=live.tok)
        return kw

    def _eos_ids(self, live: Loaded) -> set[int]:
        eos = live.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if live.tok.eos_token_id is not None:
            ids.add(live.tok.eos_token_id)
        return ids

    def generate(self, prompt: str, params: GenParams | None = None, *, live: Loaded | None = None) -> GenResult:
        """One completion of a rendered prompt (raw text, like vLLM: not stripped)."""
        import torch

        live = live or self.live
        p = GenParams(**vars(params)) if params else GenParams()
        ids, n = self._prepare(live, prompt, p)
        cancel = _Cancel()
        with self._gen_lock:
            if p.seed is not None:
                torch.manual_seed(p.seed)
            with torch.no_grad():
                out = live.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          **self._gen_kwargs(live, p, cancel))
        new = out[0, n:].tolist()
        eos = self._eos_ids(live)
        finish = "stop" if new and new[-1] in eos else "length"
        with live.tok_lock:
            text = _complete_text(live.tok, new)
        text, hit = _cut_at_stop(text, p.stop)
        if hit:
            finish = "stop"
        elif finish == "length" and len(new) < (p.max_tokens or 0):
            finish = "stop"  # a stopping criterion ended it early
        return GenResult(text, n, len(new), finish, live.version.name)

    def stream(self, prompt: str, params: GenParams | None = None, *, live: Loaded | None = None
               ) -> Iterator[str | GenResult]:
        """Yield text deltas as they are generated, then one final GenResult (text = the whole answer).

        Closing the iterator early (client gone) stops the generation at the next token.
        """
        live = live or self.live
        p = GenParams(**vars(params)) if params else GenParams()
        ids, n = self._prepare(live, prompt, p)  # bad input fails here, before anything is sent
        cancel = _Cancel()
        return TokenStream(self._stream(live, p, ids, n, cancel), cancel.event)

    def _stream(self, live: Loaded, p: GenParams, ids: Any, n: int, cancel: _Cancel) -> Iterator[str | GenResult]:
        import torch
        from transformers import TextIteratorStreamer

        eos = self._eos_ids(live)

        class _Counting(TextIteratorStreamer):
            generated = 0
            last: int | None = None

            def put(self, value: Any) -> None:
                if not (self.skip_prompt and self.next_tokens_are_prompt):
                    flat = value.reshape(-1)
                    self.generated += int(flat.numel())
                    if flat.numel():
                        self.last = int(flat[-1])
                super().put(value)

        streamer = _Counting(live.tok, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with self._gen_lock:
                    if cancel.event.is_set():
                        return
                    if p.seed is not None:
                        torch.manual_seed(p.seed)
                    with torch.no_grad():
                        live.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                            **self._gen_kwargs(live, p, cancel))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                failure.append(e)
            finally:
                streamer.text_queue.put(streamer.stop_signal)

        t = threading.Thread(target=work, name="engine-stream", daemon=True)
        t.start()
        sent = ""
        full = ""
        hold = max((len(s) for s in p.stop), default=1) - 1
        hit = False
        try:
            while True:
                try:
                    piece = streamer.text_queue.get(timeout=600)
                except queue.Empty:
                    raise RuntimeError("generation stalled for 10 minutes") from None
                if piece is streamer.stop_signal:
                    break
                full += piece
                cut, hit = _cut_at_stop(full, p.stop)
                if hit:
                    cancel.event.set()
                    if len(cut) > len(sent):
                        yield cut[len(sent):]
                    sent = cut
                    break
                ready = full[:len(full) - hold] if hold else full
                if len(ready) > len(sent):
                    yield ready[len(sent):]
                    sent = ready
            if not hit:
                cut, hit = _cut_at_stop(full.rstrip("\ufffd"), p.stop)
                if len(cut) > len(sent):
                    yield cut[len(sent):]
                    sent = cut
            t.join()
            if failure:
                raise failure[0]
            finish = "stop" if hit or streamer.last in eos or streamer.generated < (p.max_tokens or 0) else "length"
            yield GenResult(sent, n, streamer.generated, finish, live.version.name)
        finally:
            cancel.event.set()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def tokenizer_fingerprint(model_dir: str) -> str | None:
    """sha256 over a model directory's tokenizer files (None if it is not a local directory)."""
    import hashlib
    from pathlib import Path

    d = Path(model_dir)
    if not d.is_dir():
        return None
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = d / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _load_model(src: str, cfg: ModelConfig) -> Any:
    """The model alone, set up as `loader.load` sets it up."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, cfg.dtype))
        model.to(cfg.device)
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(f"model {src}: cannot load ({type(e).__name__}: {msg})") from None
    model.eval()
    return model


class TokenStream:
    """Text deltas then one GenResult; `cancel()` (any thread) stops generation at the next token."""

    def __init__(self, it: Iterator[str | GenResult], event: threading.Event):
        self._it = it
        self._event = event

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> str | GenResult:
        return next(self._it)

    def cancel(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._event.set()
        try:
            self._it.close()  # type: ignore[attr-defined]
        except ValueError:  # being consumed in another thread: the event stops it
            pass


def _complete_text(tok: Any, ids: list[int]) -> str:
    """Decoded text without a trailing incomplete UTF-8 character (the tokens that produced only part
    of a character are held back, as vLLM's incremental detokenizer does)."""
    text = tok.decode(ids, skip_special_tokens=True)
    k = len(ids)
    while text.endswith("\ufffd") and k > 0:
        k -= 1
        text = tok.decode(ids[:k], skip_special_tokens=True)
    return text


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    idx = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not idx:
        return text, False
    return text[:min(idx)], True
