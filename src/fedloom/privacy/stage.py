"""The privacy stage of a round (both runtimes): DP-FedAvg's server step, ε after each round, the stop rule.

:class:`fedloom.round.Round` builds one when ``privacy.clip`` is set; it replaces the aggregator's step by
:class:`~fedloom.privacy.mechanism.DPSum`, adds ``epsilon`` to each metrics row (``Round.extras``), and
:func:`summary` gives ``summary.json`` its ``epsilon``, ``delta`` and the sentence saying which accounting
was used and why. ``target_epsilon`` is turned into a noise multiplier here, before the first round.
"""

from __future__ import annotations

from .accountant import Accountant, Plan, solve_noise
from .mechanism import DPSum

__all__ = ["Privacy", "summary", "denominator"]


def denominator(cfg) -> float:
    """DP-FedAvg's fixed denominator: the expected cohort size ``k = qN`` (uniform weights, McMahan et al.
    2018, f̃_f with ``W = N``), or ``1/λ`` with the book's step ``G += λ·Σ diff``."""
    return 1.0 / cfg.lambda_ if cfg.lambda_ is not None else float(cfg.k)


def plan_of(cfg, noise_multiplier: float) -> Plan:
    return Plan(cfg.runtime.sampling, cfg.privacy.mode, cfg.no_models, cfg.k, noise_multiplier)


class Privacy:
    def __init__(self, cfg, server):
        p = cfg.privacy
        self.cfg, self.server = cfg, server
        sigma = p.noise_multiplier
        if sigma is None:  # target_epsilon: the smallest σ whose ε after all rounds stays within it
            sigma = solve_noise(plan_of(cfg, 1.0), cfg.global_epochs, p.delta, p.target_epsilon)
        self.noise_multiplier = float(sigma)
        self.plan = plan_of(cfg, self.noise_multiplier)
        self.accountant = Accountant(self.plan, p.delta)
        self.sum = DPSum(p, self.noise_multiplier, denominator(cfg), cfg.seed, cohort=cfg.k)

    def releases(self, rnd: int, extra: int = 0) -> int:
        """How many releases ε is composed over after round ``rnd``: the rounds (central), or the most
        rounds any one client was sampled for (local: the server knows who took part)."""
        if self.plan.mode == "central":
            return rnd
        picked = max((h.picked for h in self.server.health.values()), default=0)
        return picked + extra

    def epsilon(self, rnd: int) -> float:
        return self.accountant.epsilon(self.releases(rnd))

    def may_run(self, rnd: int) -> bool:
        """False when round ``rnd`` could take ε past ``privacy.max_epsilon`` (checked before it runs)."""
        cap = self.cfg.privacy.max_epsilon
        return cap is None or self.accountant.epsilon(self.releases(rnd, extra=1)) <= cap

    def row(self, rnd: int, row: dict) -> dict:
        """``Round.extras``: ε after this round (and how many updates the server clipped)."""
        return {"epsilon": self.epsilon(rnd), "noise_multiplier": self.noise_multiplier, **self.sum.last}


def summary(cfg, rows: list[dict]) -> dict:
    """``summary.json``'s privacy fields ({} without privacy)."""
    p = cfg.privacy
    if not p.enabled:
        return {}
    last = rows[-1] if rows else {}
    sigma = p.noise_multiplier if p.noise_multiplier is not None else last.get("noise_multiplier")
    plan = plan_of(cfg, sigma if sigma is not None else float("nan"))
    stopped = len(rows) < cfg.global_epochs and p.max_epsilon is not None
    return {
        "epsilon": last.get("epsilon", 0.0),
        "delta": p.delta,
        "noise_multiplier": sigma,
        "clip": p.clip,
        "adaptive_clip": p.adaptive is not None,
        "clip_last_round": last.get("dp_clip"),
        "privacy_mode": p.mode,
        "sampling": cfg.runtime.sampling,
        "neighbouring": plan.relation,
        "accounting": f"{Accountant.name}: {plan.why}",
        "aggregator": f"dp-fedavg (uniform weights, fixed denominator {denominator(cfg):g})",
        "stopped_by_max_epsilon": stopped,
    }
