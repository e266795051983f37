"""Token-level helpers for training and scoring: (prompt, target) pairs -> padded batches."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def encode(tok: Any, prompt: str, target: str, max_len: int = 256) -> tuple[list[int], list[int]]:
    """input ids and labels (-100 on the prompt) for `prompt + target + eos`, left-truncated. Raw text (no
    prompt) starts with the BOS token where the tokenizer starts every text with one (Llama, Gemma: they
    are far out of their distribution without it); a chat prompt carries its own in the template's text."""
    p = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else bos_ids(tok)
    t = tok(target + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
    ids, labels = (p + t)[-max_len:], ([-100] * len(p) + t)[-max_len:]
    return ids, labels


def bos_ids(tok: Any) -> list[int]:
    """[BOS id] when this tokenizer puts one before every text it encodes, else [] (SmolLM2, Qwen)."""
    cached = getattr(tok, "_agentsleep_bos", None)
    if cached is not None:
        return list(cached)
    bos = getattr(tok, "bos_token_id", None)
    try:
        out = [bos] if bos is not None and tok("a")["input_ids"][:1] == [bos] else []
    except Exception:  # noqa: BLE001 - a tokenizer that cannot say: no BOS
        out = []
    try:
        tok._agentsleep_bos = tuple(out)
    except Exception:  # noqa: BLE001 - some tokenizers refuse new attributes
        pass
    return out


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded batch; padding never counts in the loss (pad == eos on SmolLM2)."""
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), n), -100, dtype=torch.long)
    att = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        lab[i, :len(y)] = torch.tensor(y)
        att[i, :len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": att.to(device), "labels": lab.to(device)}


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each labelled token, and the mask of labelled positions."""
    lg, lb = logits[:, :-1], labels[:, 1:]
    return lg, lb != -100


def picked(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, V) logits at labelled positions, their targets, and each position's row.

    Selecting before the softmax matters: cross-entropy over a transposed
    (B, V, T) view takes a slow strided path on CPU (measured 30x slower).
    """
    lg, mask = shifted(logits, labels)
    rows = mask.nonzero()[:, 0]
    return lg[mask].float(), labels[:, 1:][mask], rows


# Decoder-only families whose logits are exactly lm_head(final hidden state): for these the
# vocabulary projection (a fifth of SmolLM2's compute) is applied to labelled positions only.
_PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3"}


def forward_picked(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`picked(model(batch).logits, labels)`, without computing logits nobody reads.

    Works on a peft model too (its LoRA layers live inside the decoder, and
    `disable_adapter()` still applies). Other architectures take the full path.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in _PLAIN_HEAD:
        return picked(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    h = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["labels"][:, 1:] != -100
    return base.get_output_embeddings()(h[:, :-1][mask]).float(), batch["labels"][:, 1:][mask], mask.nonzero()[:, 0]


def sequence_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean NLL of the labelled tokens, per sequence."""
    return nll_by_row(*forward_picked(model, batch), batch["labels"].shape[0])


def per_sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nll_by_row(*picked(logits, labels), labels.shape[0])


def nll_by_row(sel: torch.Tensor, tgt: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Mean NLL per sequence from picked logits."""
    nll = F.cross_entropy(sel, tgt, reduction="none")
    total = torch.zeros(n, device=nll.device).index_add(0, rows, nll)
    count = torch.zeros(n, device=nll.device).index_add(0, rows, torch.ones_like(nll))
    return total / count.clamp(min=1)


def ce_picked(sel: torch.Tensor, tgt: torch.Tensor, reduction: str = "mean", rows: torch.Tensor | None = None,
              n_rows: int = 0) -> torch.Tensor:
    """Cross-entropy of picked logits (0 when there are none); reduction "mean" or "sum" over positions,
    or "item_sum": each row's mean over its positions, summed over the `n_rows` rows (`rows` from picked)."""
    if not len(tgt):
        return sel.sum() * 0.0
    if reduction == "item_sum":
        return nll_by_row(sel, tgt, rows, n_rows).sum()
    return F.cross_entropy(sel, tgt, reduction=reduction)


def kl_picked(lp: torch.Tensor, lq: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-token KL(p || q) between the picked (N, V) logits of two models (p is the target),
    averaged ("mean") or summed ("sum") over positions, or per position ("none")."""
    if not len(lp):
        return lq.sum(-1) * 0.0 if reduction == "none" else lq.sum() * 0.0
    p_log, q_log = F.log_softmax(lp, -1), F.log_softmax(lq, -1)
    per_token = (p_log.exp() * (p_log - q_log)).sum(-1)
    return per_token if reduction == "none" else per_token.sum() if reduction == "sum" else per_token.mean()


@torch.no_grad()
def batched_nll(model: Any, tok: Any, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(pairs), batch_size):
        rows = [encode(tok, p, t) for p, t in pairs[i:i + batch_size]]
        out += sequence_nll(model, collate(rows, tok.pad_token_id, device)).tolist()
    return out
