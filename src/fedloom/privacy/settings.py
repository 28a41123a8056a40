"""The ``privacy`` config section and the checks that tie it to the rest of a config.

``privacy: {clip, noise_multiplier | target_epsilon, delta, mode: central | local, max_epsilon,
reproducible_noise}``; with no ``clip`` the section is off and every other field must stay unset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PrivacyConfig", "check_privacy"]


class AdaptiveClip(BaseModel):
    """Adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021): the clip norm follows the
    ``target_quantile`` of the update norms, ``C ← C·exp(−lr·(b̃ − target_quantile))``, ``b̃`` the noised
    fraction of updates that were not clipped."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target_quantile: float = Field(0.5, gt=0, lt=1, description="γ: the share of updates that should be unclipped")
    lr: float = Field(0.2, gt=0, description="η_C: the geometric step of the clip norm")
    count_noise: float | None = Field(
        None, gt=0, description="σ_b: noise std on the count of unclipped updates (default: k/20, as the paper)"
    )


class PrivacyConfig(BaseModel):
    """Client-level differential privacy (DP-FedAvg, McMahan et al. ICLR 2018); see docs/privacy.md."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    clip: float | None = Field(None, gt=0, allow_inf_nan=False, description="L2 norm each client update is clipped to")
    noise_multiplier: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="noise std / clip (on the sum: central; on each update: local)"
    )
    target_epsilon: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="solve the noise multiplier for this ε after all rounds"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee; must be < 1/no_models")
    mode: Literal["central", "local"] = Field("central", description="who adds the noise: the server or each client")
    adaptive: AdaptiveClip | None = Field(None, description="adaptive clipping; clip is then the initial norm")
    max_epsilon: float | None = Field(None, gt=0, description="stop before the round whose ε would pass this")
    reproducible_noise: bool = Field(
        True, description="draw the noise from (seed, round): reproducible, and only as secret as the seed"
    )

    @property
    def enabled(self) -> bool:
        return self.clip is not None


def check_privacy(cfg) -> None:
    """Refuse contradictions between ``cfg.privacy`` and the rest of ``cfg`` (ValueError naming the field)."""
    p = cfg.privacy
    if not p.enabled:
        others = [n for n in ("noise_multiplier", "target_epsilon", "max_epsilon") if getattr(p, n) is not None]
        if others:
            raise ValueError(f"privacy.{others[0]} needs privacy.clip (the L2 norm updates are clipped to)")
        return
    if p.noise_multiplier is not None and p.target_epsilon is not None:
        raise ValueError("privacy: set noise_multiplier or target_epsilon, not both")
    if p.noise_multiplier is None and p.target_epsilon is None:
        raise ValueError("privacy: set noise_multiplier (or target_epsilon to solve for it)")
    if p.delta >= 1 / cfg.no_models:
        raise ValueError(f"privacy.delta {p.delta:g} must be < 1/no_models = {1 / cfg.no_models:g} (client-level δ)")
    if p.adaptive is not None:
        _check_adaptive(cfg)
    if cfg.aggregator != "mean":
        raise ValueError(f"privacy: aggregator '{cfg.aggregator}' is not linear; DP-FedAvg noises a sum: use mean")
    if cfg.secure.method != "none":
        raise ValueError(
            "privacy with secure aggregation is not supported: the noise would have to be added where the sum is "
            "decrypted (see docs/privacy.md); drop secure or privacy"
        )
    if cfg.runtime.min_clients != 1:
        raise ValueError(
            "privacy: runtime.min_clients must be 1: every round releases its noised sum, however few answered"
        )
    if p.max_epsilon is not None and p.target_epsilon is not None and p.max_epsilon < p.target_epsilon:
        raise ValueError(
            f"privacy.max_epsilon {p.max_epsilon:g} is below target_epsilon {p.target_epsilon:g}: it would stop the run"
        )


def count_noise(cfg) -> float:
    """σ_b of adaptive clipping: set, or the paper's default ``k/20`` (expected cohort size over 20)."""
    a = cfg.privacy.adaptive
    return a.count_noise if a.count_noise is not None else cfg.k / 20


def _check_adaptive(cfg) -> None:
    p = cfg.privacy
    if p.mode != "central":
        raise ValueError("privacy.adaptive needs mode: central (the server estimates the clip norm)")
    if p.noise_multiplier is None:
        raise ValueError("privacy.adaptive needs privacy.noise_multiplier (target_epsilon is not solved with it)")
    sb, z = count_noise(cfg), p.noise_multiplier
    if not 2 * sb > z:
        raise ValueError(
            f"privacy.adaptive.count_noise {sb:g} must exceed noise_multiplier/2 = {z / 2:g}: the update noise "
            "(z^-2 - (2 count_noise)^-2)^-1/2 is otherwise undefined (Andrew et al. 2021)"
        )
