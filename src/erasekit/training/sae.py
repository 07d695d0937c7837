"""A TopK sparse autoencoder and its training (the SAE guards: SAeUron on UNet activations, Concept
Steerers on the text encoder's residual stream).

``z = TopK(ReLU(W_enc (x − b_dec) + b_enc))``, ``x̂ = z W_dec + b_dec``: untied weights with ``W_dec``
initialised as ``W_encᵀ`` and its rows kept unit-norm (the gradient's component along each row removed
before the step, the rows renormalised after), ``b_dec`` initialised at the first batch's geometric
median; loss FVU (``Σ‖x̂ − x‖² / Σ‖x − x̄‖²``) plus ``auxk_alpha`` times the AuxK loss (the ``d/2`` top
latents among those dead for ``dead_tokens`` tokens reconstruct the residual ``x − x̂``), Adam (eps
6.25e-10) with the learning rate decayed linearly to 0, gradients clipped at 1 (OpenAI's TopK SAE as
both releases train it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class SAEConfig:
    """The SAE's size and training (the guards' configs carry these fields)."""

    expansion: int = 16
    k: int = 32
    train_steps: int = 2000
    batch: int = 4096
    lr: float = 4e-4
    auxk_alpha: float = 1 / 32
    dead_tokens: int = 10_000_000
    seed: int = 0


class TopKSAE(nn.Module):
    """``z = TopK(ReLU(W_enc (x − b_dec) + b_enc))``, ``x̂ = z W_dec + b_dec`` (untied, unit-norm decoder rows)."""

    def __init__(self, d_in: int, n_latents: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(d_in, n_latents)
        nn.init.zeros_(self.encoder.bias)
        self.w_dec = nn.Parameter(self.encoder.weight.detach().clone())  # [n_latents, d_in]
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.normalise_decoder()

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.w_dec.div_(self.w_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.w_dec.dtype).eps))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(x - self.b_dec))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse code: the ``k`` largest pre-activations of each vector, the rest 0."""
        pre = self.pre_acts(x)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec + self.b_dec


def geometric_median(x: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """Weiszfeld's iterations (the release's ``b_dec`` initialisation)."""
    m = x.mean(0)
    for _ in range(iterations):
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-8)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def train_sae(x: torch.Tensor, config: SAEConfig, progress: bool = True, desc: str = "SAE") -> tuple[TopKSAE, dict]:
    """A :class:`TopKSAE` trained on the vectors ``x [N, d]`` (float32) with FVU + AuxK; returns it and
    the final FVU and dead share."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    d = x.shape[1]
    sae = TopKSAE(d, d * config.expansion, config.k).to(x.device)
    first = x[torch.randperm(len(x), generator=gen)[: config.batch].to(x.device)]
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(first))
    opt = torch.optim.Adam(sae.parameters(), lr=config.lr, eps=6.25e-10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / config.train_steps)
    since_fired = torch.zeros(d * config.expansion, dtype=torch.long, device=x.device)
    k_aux = d // 2
    fvu = torch.tensor(float("nan"))
    for _ in tqdm(range(config.train_steps), desc=desc, disable=not progress, unit="step"):
        batch = x[torch.randint(0, len(x), (min(config.batch, len(x)),), generator=gen).to(x.device)]
        pre = sae.pre_acts(batch)
        top = pre.topk(sae.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        recon = sae.decode(z)
        total = (batch - batch.mean(0)).pow(2).sum()
        fvu = (recon - batch).pow(2).sum() / total
        fired = torch.zeros_like(since_fired, dtype=torch.bool)
        fired[top.indices.flatten()] = True
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + len(batch))
        dead = since_fired >= config.dead_tokens
        loss = fvu
        if dead.any() and config.auxk_alpha > 0:
            aux_pre = pre.masked_fill(~dead, 0.0)
            aux_top = aux_pre.topk(min(k_aux, int(dead.sum())), dim=-1)
            aux_z = torch.zeros_like(pre).scatter(-1, aux_top.indices, aux_top.values)
            residual = batch - recon.detach()
            aux = (aux_z @ sae.w_dec - residual).pow(2).sum() / total
            loss = loss + config.auxk_alpha * min(int(dead.sum()) / k_aux, 1.0) * aux
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():  # keep the decoder rows unit-norm: drop the gradient along each row
            g = sae.w_dec.grad
            if g is not None:
                g.sub_((g * sae.w_dec).sum(1, keepdim=True) * sae.w_dec)
        nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sched.step()
        sae.normalise_decoder()
    return sae.eval(), {"fvu": float(fvu.detach()), "dead_share": float((since_fired >= config.dead_tokens).float().mean())}
