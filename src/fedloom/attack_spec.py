"""The ``attack`` config section: simulated attackers (the in-process simulation only; see fedloom.attacks).

Torch-free on purpose: config loading imports it. ``attack: {name, fraction | clients, start_round, ...}``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AttackConfig", "RobustnessConfig", "ATTACKS", "ATTACK_PARAMS"]

ATTACKS = ("label_flip", "sign_flip", "gaussian", "alie", "ipm", "backdoor")
# attack -> its own parameters (the others are refused when set away from their default)
ATTACK_PARAMS: dict[str, tuple[str, ...]] = {
    "label_flip": (),
    "sign_flip": ("scale",),
    "gaussian": ("std",),
    "alie": ("z",),
    "ipm": ("epsilon",),
    "backdoor": ("poison_label", "poisoning_per_batch", "trigger", "trigger_value", "gamma"),
}
_OWN = ("scale", "std", "z", "epsilon", "poison_label", "poisoning_per_batch", "trigger", "trigger_value", "gamma")


class AttackConfig(BaseModel):
    """Which clients attack (``fraction`` of ``no_models`` drawn from the seed, or the listed ``clients``),
    from which round, and how."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["label_flip", "sign_flip", "gaussian", "alie", "ipm", "backdoor"]
    fraction: float | None = Field(None, gt=0, le=1, description="share of all clients that attack (seeded draw)")
    clients: list[int] | None = Field(None, description="the attacking client ids (instead of fraction)")
    start_round: int = Field(1, ge=1, description="first round in which the attackers attack")
    scale: float | None = Field(None, gt=0, description="sign_flip: send -scale x the honest mean (default 1)")
    std: float | None = Field(None, gt=0, description="gaussian: per-coordinate standard deviation (default 1)")
    z: float | None = Field(None, description="alie: override the z derived from n and f")
    epsilon: float | None = Field(None, gt=0, description="ipm: send -epsilon x the honest mean (default 0.5)")
    poison_label: int | None = Field(None, ge=0, description="backdoor: the target label (default 0)")
    poisoning_per_batch: int | None = Field(None, ge=1, description="backdoor: poisoned rows per batch (default 4)")
    trigger: list[int] | None = Field(None, description="backdoor: feature indices set to trigger_value")
    trigger_value: float | None = Field(None, allow_inf_nan=False, description="backdoor: default the data's max")
    gamma: float | None = Field(None, gt=0, description="backdoor: model-replacement scale (≈ n/η; default 1)")

    @model_validator(mode="after")
    def _one_selection(self) -> AttackConfig:
        if (self.fraction is None) == (self.clients is None):
            raise ValueError("set one of fraction (a share of the clients) and clients (their ids)")
        if self.clients is not None and (not self.clients or min(self.clients) < 0):
            raise ValueError("clients must be a non-empty list of client ids ≥ 0")
        if self.trigger is not None and (not self.trigger or min(self.trigger) < 0):
            raise ValueError("trigger must be a non-empty list of feature indices ≥ 0")
        for key in _OWN:
            if getattr(self, key) is not None and key not in ATTACK_PARAMS[self.name]:
                takes = ", ".join(ATTACK_PARAMS[self.name]) or "no parameters of its own"
                raise ValueError(f"attack {self.name} takes {takes}; {key} is not one of them")
        return self

    def check(self, no_models: int, num_features: int | None = None) -> str | None:
        """Why this attack cannot run in a federation of ``no_models`` clients, or None."""
        if self.clients is not None and max(self.clients) >= no_models:
            return f"attack.clients: client {max(self.clients)} does not exist (no_models is {no_models})"
        if self.clients is not None and len(set(self.clients)) != len(self.clients):
            return "attack.clients: a client is listed twice"
        return None


class RobustnessConfig(BaseModel):
    """``robustness``: the grid of ``fedloom experiment robustness`` (aggregators × attacks × fractions).

    Entries are written as in the ``aggregator`` and ``attack`` sections (without ``fraction``/``clients``:
    the experiment sets the fraction). Each run is validated as a user's config before anything trains.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    aggregators: list[str | dict] = Field(
        default_factory=lambda: ["mean", "median", "trimmed_mean", "krum", "geomed", "norm_clip"], min_length=1
    )
    attacks: list[dict] | None = Field(
        None, description="default: the config's attack section, else gaussian (std 10), sign_flip, alie, backdoor"
    )
    fractions: list[float] | None = Field(
        None, min_length=1, description="default [0.2]; with the config's own attack: its own clients or fraction"
    )

    @model_validator(mode="after")
    def _fractions(self) -> RobustnessConfig:
        if any(not 0 < f <= 1 for f in self.fractions or []):
            raise ValueError("fractions must lie in (0, 1] (the clean run is always added)")
        for a in self.attacks or []:
            if "name" not in a or "fraction" in a or "clients" in a:
                raise ValueError("each attack needs a name and no fraction/clients (fractions sets them)")
        return self
