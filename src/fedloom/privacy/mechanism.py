"""DP-FedAvg's two halves (McMahan et al., ICLR 2018, Algorithm 1 with uniform weights ``w_k = 1``):

client: ``Δ_k ← clip(Δ_k, C) = Δ_k · min(1, C/‖Δ_k‖₂)`` (and, in ``local`` mode, ``+ N(0, (σC)²)`` on its own);
server: ``G ← G + (Σ_k clip(Δ_k) + N(0, (σC)² I)) / D`` with the **fixed** denominator ``D`` — the paper's
``q·W`` with ``W = N`` (uniform weights), i.e. the expected cohort size ``k = qN``; with the book's λ rule
(``G += λ·Σ``) it is ``1/λ``. A fixed ``D`` keeps the sensitivity of the released step at ``C/D`` whatever
number of clients answered (the paper's estimator f̃_f); dividing by the number that answered would not.

The server clips the decoded updates again before summing: the bound the accountant relies on holds even for
a client, or a lossy codec, that did not clip. Noise comes from a generator seeded by (seed, round, tag)
(and the client id for local noise) when ``privacy.reproducible_noise`` is on: the same seed gives the same
noise — and anyone who knows the seed can subtract it (docs/privacy.md).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["clip_rows", "gaussian", "privatize_update", "DPSum", "NOISE_TAG", "LOCAL_NOISE_TAG"]

NOISE_TAG = 17  # stream id of the server's noise on the sum
COUNT_NOISE_TAG = 19  # stream id of adaptive clipping's noise on the unclipped count
LOCAL_NOISE_TAG = 18  # stream id of a client's own noise (local mode)


def clip_rows(diffs: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of ``diffs`` ``[clients, params]`` scaled to L2 norm ≤ ``clip``; (clipped rows, norms before)."""
    norms = torch.linalg.vector_norm(diffs.double(), dim=1)  # [clients]
    scale = torch.clamp(clip / torch.clamp(norms, min=1e-300), max=1.0)  # [clients]
    return (diffs.double() * scale[:, None]).to(diffs.dtype), norms


def gaussian(size: int, std: float, key: list[int] | None) -> torch.Tensor:
    """``N(0, std²)`` of ``size`` values (float64); ``key`` seeds the generator, None: fresh OS entropy."""
    rng = np.random.default_rng(key)
    return torch.from_numpy(rng.standard_normal(size) * std)


def privatize_update(privacy, diff: torch.Tensor, seed: int, rnd: int, client: int, fresh: bool = False):
    """A client's side, before its upload is encoded: clip to ``privacy.clip``; in local mode add its own
    noise ``N(0, (σC)²)`` (``fresh``: from OS entropy, as a deployed client does, so the server cannot redraw it)."""
    if privacy.adaptive is not None:
        return diff  # the server clips, to the norm it adapts (central mode: it is trusted with the update)
    clipped, _ = clip_rows(diff[None], privacy.clip)
    out = clipped[0]
    if privacy.mode == "local":
        key = None if fresh or not privacy.reproducible_noise else [seed, rnd, LOCAL_NOISE_TAG, client]
        out = out + gaussian(out.numel(), privacy.noise_multiplier * privacy.clip, key).to(out.dtype)
    return out


class DPSum:
    """The server's step of DP-FedAvg (central: clip, sum, noise, fixed denominator; local: the clients have
    noised, the server sums over the fixed denominator).

    Adaptive clipping (Andrew et al., NeurIPS 2021, Algorithm 1 with the geometric update): the server also
    counts the updates within the current norm ``C``, releases ``b̃ = (Σ b_i + N(0, σ_b²)) / m`` (``m`` = ``k``,
    the expected cohort) and sets ``C ← C·exp(−η(b̃ − γ))``; the update noise is then
    ``σ_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)`` so that both releases together cost what one Gaussian of multiplier
    ``z`` costs (the paper's Theorem 1), which is what the accountant composes."""

    def __init__(self, privacy, noise_multiplier: float, denominator: float, seed: int, cohort: int = 1):
        self.privacy, self.sigma, self.denominator, self.seed = privacy, noise_multiplier, denominator, seed
        self.clip = float(privacy.clip)  # adapted each round with privacy.adaptive, else fixed
        self.cohort, self.count_std = cohort, 0.0
        self.update_sigma = noise_multiplier
        if privacy.adaptive is not None:
            a = privacy.adaptive
            self.count_std = a.count_noise if a.count_noise is not None else cohort / 20
            z = noise_multiplier
            self.update_sigma = 0.0 if z == 0 else (z**-2 - (2 * self.count_std) ** -2) ** -0.5
        self.last: dict = {}

    def _key(self, rnd: int, tag: int) -> list[int] | None:
        return [self.seed, rnd, tag] if self.privacy.reproducible_noise else None

    def noise(self, size: int, rnd: int) -> torch.Tensor:
        return gaussian(size, self.update_sigma * self.clip, self._key(rnd, NOISE_TAG))

    def _adapt(self, rnd: int, norms: torch.Tensor) -> None:
        """Andrew et al.'s private quantile step: the noised unclipped fraction moves ``C`` geometrically."""
        a = self.privacy.adaptive
        unclipped = float((norms <= self.clip).sum())
        noisy = (unclipped + float(gaussian(1, self.count_std, self._key(rnd, COUNT_NOISE_TAG))[0])) / self.cohort
        self.last["dp_unclipped_fraction"] = noisy
        self.clip = self.clip * float(np.exp(-a.lr * (noisy - a.target_quantile)))

    def step(self, rnd: int, global_vec: torch.Tensor, diffs: torch.Tensor, present: torch.Tensor | None):
        """The new global vector from the decoded updates ``diffs`` ``[clients, params]`` (absent entries: 0)."""
        if present is not None:
            diffs = diffs.masked_fill(~present, 0.0)
        total = torch.zeros(global_vec.numel(), dtype=torch.float64)
        norms = torch.zeros(0, dtype=torch.float64)
        self.last = {"dp_clip": self.clip}
        if diffs.shape[0]:
            if self.privacy.mode == "central":
                rows, norms = clip_rows(diffs, self.clip)
            else:
                rows = diffs  # each client noised its own update; clipping now would bias it
            total = rows.double().sum(0)
        self.last["dp_clipped_updates"] = int((norms > self.clip).sum())
        if self.privacy.mode == "central":
            total = total + self.noise(total.numel(), rnd)
        new = global_vec + (total / self.denominator).to(global_vec.dtype)
        if self.privacy.adaptive is not None:
            self._adapt(rnd, norms)  # after this round's step, which used this round's C
        return new
