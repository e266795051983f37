"""Prompts and batched greedy generation, shared by ask, dreaming and the gate.

One prompt format everywhere matters: the student is trained on exactly the
chat layout that `ask --no-memory` later uses, and the teacher sees the same
layout plus the memory in the system turn.
"""
from __future__ import annotations

from typing import Any, Iterable

MEMORY_SYSTEM = ("You are a helpful assistant with a memory. What you remember:\n{memories}\n"
                 "Use what you remember when it answers the question.")
# A question asked with memories (`ask`, every in-context evaluation; the sleep's teacher keeps
# MEMORY_SYSTEM, see dream.teacher_prompt). Small models echo a persona line ("You're a helpful
# assistant with a memory ...") instead of answering; this wording answered more of the development
# questions from the same notes: 151 against 137 of 240 with one note, 77 against 69 of 120 with three
# unrelated notes beside it (SmolLM2-135M-Instruct, greedy; docs/EXPERIMENTS.md).
ANSWER_SYSTEM = "What you know about the user:\n{memories}\nAnswer the user's question with it, in a few words."


def chat(tok: Any, user: str, *, system: str | None = None, history: Iterable[tuple[str, str]] = (),
         prefill: str = "") -> str:
    """Render a chat prompt ending at the assistant turn (plus an optional prefill)."""
    msgs: list[dict[str, str]] = []
    if system:
        msgs.append({"role": "system", "content": system})
    for u, a in history:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": user})
    return render_messages(tok, msgs) + prefill


def render_messages(tok: Any, messages: list[dict[str, Any]], **kw: Any) -> str:
    """The tokenizer's chat template over `messages`, ending at the assistant turn, for any Hugging Face
    model: a template that refuses a system turn (Gemma, older Mistral) gets the system text folded into
    the first user turn, and a tokenizer with no template (a base model) gets a plain "User:/Assistant:"
    layout. Other template errors are raised."""
    if not getattr(tok, "chat_template", None):
        return plain_layout(messages)
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
    except Exception:  # noqa: BLE001 - jinja's TemplateError from raise_exception, or a ValueError
        if not messages or messages[0].get("role") != "system":
            raise
        return tok.apply_chat_template(fold_system(messages), tokenize=False, add_generation_prompt=True, **kw)


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system turn's text put before the first user turn's (for templates without a system role)."""
    system, rest = messages[0], list(messages[1:])
    for i, m in enumerate(rest):
        if m.get("role") == "user":
            rest[i] = {**m, "content": f"{system.get('content') or ''}\n\n{m.get('content') or ''}"}
            return rest
    return [{"role": "user", "content": system.get("content") or ""}] + rest


def plain_layout(messages: list[dict[str, Any]]) -> str:
    """A prompt for a model without a chat template: one "Role: text" paragraph per message."""
    names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
    turns = [f"{names.get(m.get('role'), str(m.get('role')).capitalize())}: {m.get('content') or ''}" for m in messages]
    return "\n\n".join(turns + ["Assistant:"])


def memory_system(memories: list[str], template: str = MEMORY_SYSTEM) -> str | None:
    """The system turn that shows `memories` in a conversation (the chat endpoint, the LangChain wrapper)."""
    if not memories:
        return None
    return template.format(memories="\n".join(f"- {m.strip()}" for m in memories))


def answer_system(memories: list[str]) -> str | None:
    """The system turn for a question to answer from `memories`: `ask` and every in-context evaluation."""
    return memory_system(memories, ANSWER_SYSTEM)


def generate(model: Any, tok: Any, prompts: list[str], *, max_new_tokens: int = 64, batch_size: int = 16,
             progress=None, do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Greedy (or sampled) completions for rendered prompts, batched with left padding.

    `model` may also be a text generator (`models.vllm_generate.VllmGenerator`):
    then vLLM generates, batching by itself."""
    if getattr(model, "is_text_generator", False):
        return model.generate_text(prompts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   temperature=temperature, progress=progress)
    import torch

    out: list[str] = []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in chunk]
        with torch.no_grad():
            gen = _generate_shared_prefix(model, tok, ids, device, max_new_tokens, do_sample, temperature)
            if gen is None:
                enc = tok.pad({"input_ids": ids}, return_tensors="pt").to(device)  # tokenized once, above
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                     temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                     pad_token_id=tok.pad_token_id)
                gen = gen[:, enc["input_ids"].shape[1]:]
        out += [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
        if progress:
            progress(len(chunk))
    return out


MIN_SHARED_PREFIX = 48  # tokens: the writer's few-shot prompts (~150 shared) take this path; a shared system turn alone does not


def shared_prefix_len(ids: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own."""
    n = min(len(x) for x in ids) - 1
    first = ids[0]
    for x in ids[1:]:
        k = 0
        while k < n and x[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _generate_shared_prefix(model: Any, tok: Any, ids: list[list[int]], device: Any, max_new_tokens: int,
                            do_sample: bool, temperature: float):
    """Generate with the batch's common prompt prefix run once. Few-shot prompts (the dream writer's)
    share ~75% of their tokens, and on a CPU the prompt pass is most of a short generation's time.
    The prefix's KV cache is computed for one row and repeated over the batch; each row's own tokens
    follow after padding, which the attention mask hides, so positions match plain left padding.
    Returns the new tokens, or None when the batch shares too little or the model keeps no cache."""
    import torch

    p = shared_prefix_len(ids) if len(ids) > 1 else 0
    if p < MIN_SHARED_PREFIX:
        return None
    pre = model(input_ids=torch.tensor([ids[0][:p]], device=device), use_cache=True).past_key_values
    if not hasattr(pre, "batch_repeat_interleave"):
        return None
    cache = pre  # this call's own cache: repeated over the batch in place, no copy needed
    cache.batch_repeat_interleave(len(ids))
    width = max(len(x) for x in ids) - p
    pad = tok.pad_token_id
    rows = [x[:p] + [pad] * (width - len(x) + p) + x[p:] for x in ids]
    mask = [[1] * p + [0] * (width - len(x) + p) + [1] * (len(x) - p) for x in ids]
    input_ids = torch.tensor(rows, device=device)
    gen = model.generate(input_ids=input_ids, attention_mask=torch.tensor(mask, device=device), past_key_values=cache,
                         max_new_tokens=max_new_tokens, do_sample=do_sample,
                         temperature=temperature if do_sample else None, top_p=None, top_k=None, pad_token_id=pad)
    return gen[:, input_ids.shape[1]:]


def answers(model: Any, tok: Any, questions: list[str], *, memories: list[list[str]] | None = None,
            max_new_tokens: int = 24, batch_size: int = 24) -> list[str]:
    """Greedy answers to questions asked as `ask` asks them: closed-book, or with each question's
    memories in the system turn. Every evaluation (the gate, the benchmarks) asks through here, so
    "closed-book accuracy" means one thing across the project."""
    prompts = [chat(tok, q, system=answer_system(memories[i]) if memories else None) for i, q in enumerate(questions)]
    return generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
