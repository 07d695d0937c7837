"""Token search (MMA-Diffusion's text attack, Yang et al. 2024): greedy coordinate gradient (GCG, Zou
et al. 2023) over ``k = 20`` prompt tokens that maximises the cosine similarity between their text
features and the trial prompt's, with the concept's own words banned (so a word filter would pass it)::

    max_tokens  cos( E(tokens), E(prompt) )

Every iteration takes the gradient of the loss with respect to the one-hot tokens, keeps the
``top_k`` most promising replacements per position, evaluates ``candidates`` random single-token
swaps and keeps the best if it improves. ``E`` is the reference (original) model's text encoding,
flattened over the token features the denoiser reads (MMA compares CLIP's features of the target
prompt; here the whole sequence, which is what the denoiser sees; on SDXL and SD3 every encoder's
features together). The tokens are the first tokenizer's and the gradient flows through the first
text encoder (the one whose embeddings the one-hot tokens index); the swaps are then scored through
every encoder. SD and SDXL only (:data:`~erasekit.attacks.diffusion.tokens.HOOKED_FAMILIES`). Budget unit: iterations (the paper runs 1 000).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig
from erasekit.attacks.diffusion.tokens import (
    HOOKED_FAMILIES,
    allowed_tokens,
    banned_words,
    check_fits,
    encode_choice,
    token_texts,
)
from erasekit.core.registry import register_attack


@dataclass
class TokenSearchConfig(AttackConfig):
    budget: int = field(default=60, metadata={"help": "GCG iterations"})
    n_tokens: int = field(default=20, metadata={"help": "adversarial tokens", "min": 1})
    top_k: int = field(default=16, metadata={"help": "replacements kept per position", "min": 1})
    candidates: int = field(default=64, metadata={"help": "swaps evaluated per iteration", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed of the initial tokens and swaps"})


@register_attack(
    "token-search", TokenSearchConfig, budget_unit="iterations", kind="prompt", denoiser=False, families=HOOKED_FAMILIES
)
def token_search(arena, config: TokenSearchConfig, tracker, progress: bool = True) -> dict:
    """GCG over prompt tokens (concept words banned) matching the prompt's text features (MMA)."""
    tok = arena.tokenizer()
    check_fits(tok, config.n_tokens)
    te = arena.text_encoder(reference=True)
    target = torch.nn.functional.normalize(arena.cond(arena.prompts, reference=True).tokens.float().flatten(1), dim=-1)
    ids, words = allowed_tokens(tok, arena.profile.vocabulary, banned_words(arena.concept, arena.testbed_world))
    table = te.get_input_embeddings().weight.detach()
    gen = torch.Generator().manual_seed(config.seed)
    P, k, V = len(arena.prompts), config.n_tokens, len(ids)
    cur = torch.randint(0, V, (P, k), generator=gen)

    def loss_of(choice: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        feats = encode_choice(arena, words, choice).flatten(1)
        return (1 - (torch.nn.functional.normalize(feats, dim=-1) * tgt.to(feats)).sum(-1)).cpu()  # the search runs on the CPU

    best = loss_of(cur, target)
    ids_dev = ids.to(table.device)
    for it in range(1, config.budget + 1):
        onehot = torch.nn.functional.one_hot(cur, V).float().to(table.device).requires_grad_(True)
        emb_table = table[ids_dev].float()

        def hook(out, onehot=onehot):  # the k word positions (after BOS) take the one-hot tokens' embeddings
            return torch.cat([out[:, :1], (onehot @ emb_table).to(out.dtype), out[:, 1 + k :]], dim=1)

        feats = arena.cond(token_texts(words, cur), token_hook=hook, reference=True, grad=True).tokens.float().flatten(1)
        loss = (1 - (torch.nn.functional.normalize(feats, dim=-1) * target.to(feats)).sum(-1)).sum()
        grad = torch.autograd.grad(loss, [onehot])[0]  # [P, k, V]
        top = (-grad).topk(min(config.top_k, V), dim=-1).indices.cpu()  # [P, k, top_k]
        B = config.candidates
        pos = torch.randint(0, k, (P, B), generator=gen)
        pick = torch.randint(0, top.shape[-1], (P, B), generator=gen)
        cand = cur[:, None].repeat(1, B, 1)
        rows = torch.arange(P)[:, None].expand(P, B)
        cand[rows, torch.arange(B)[None].expand(P, B), pos] = top[rows, pos, pick]
        scores = loss_of(cand.reshape(-1, k), target.repeat_interleave(B, 0)).view(P, B)
        s_best, j = scores.min(1)
        better = s_best < best
        cur[better] = cand[torch.arange(P), j][better]
        best = torch.where(better, s_best, best)
        if tracker.due(it):
            texts = token_texts(words, cur)
            arena.report_texts(tracker, it, [texts[t.prompt_index] for t in arena.trials])
            if not tracker.pending():
                break
    return {"final_similarity": [round(1 - float(x), 4) for x in best]}
