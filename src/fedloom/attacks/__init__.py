"""Simulated attackers, for the in-process simulation only (the Flower runtime has no attackers of its own:
a real attacker there is a real client).

``attack: {name, fraction | clients, start_round, ...}``. Which clients attack is fixed by the seed
(``fraction`` of ``no_models``, at least one) or by ``clients``. From ``start_round`` on, an attacker in the
cohort trains like everybody (same engine, same round), then its update is replaced
(:meth:`Attack.apply`, called by ``simulation.LocalCohort.train`` after training and before the upload
codec), so it travels through the same codec, checks and aggregator as an honest one:

- ``label_flip``, ``backdoor``: the attackers train again on doctored rows (attacks/data.py);
  the backdoor's update is then scaled by ``gamma`` (Bagdasaryan et al.'s model replacement,
  ``X̃ − G = γ(X − G)``, γ ≈ n/η);
- ``sign_flip``, ``ipm``, ``gaussian``, ``alie``: a vector computed from the honest updates (attacks/updates.py).

Every row gets ``attackers`` (how many of the aggregated clients were attackers); with ``backdoor`` also
``backdoor_accuracy`` (attacks/data.py :func:`backdoor_accuracy`), next to the main-task ``accuracy``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from ..attack_spec import AttackConfig
from ..training import client_seed
from . import data as poison
from . import updates

__all__ = ["Attack", "choose_attackers", "make_attack"]

_ATTACK_TAG = 15  # stream id of the attackers' draw and their random updates (the book's chapter 15)


def choose_attackers(spec: AttackConfig, no_models: int, seed: int) -> list[int]:
    """The attacking client ids: ``spec.clients``, or ``max(1, round(fraction × no_models))`` drawn from the seed."""
    if spec.clients is not None:
        return sorted(spec.clients)
    count = min(no_models, max(1, round(spec.fraction * no_models)))
    rng = np.random.default_rng([seed, _ATTACK_TAG, 0])
    return sorted(int(c) for c in rng.choice(no_models, size=count, replace=False))


class Attack:
    """The attackers of one simulated federation."""

    def __init__(self, spec: AttackConfig, data, seed: int, batch_size: int, server=None):
        self.spec, self.data, self.seed, self.server = spec, data, seed, server
        self.attackers = choose_attackers(spec, data.num_clients, seed)
        self.batch_size = batch_size
        self.trigger = spec.trigger if spec.trigger is not None else poison.default_trigger(data)
        self.trigger_value = spec.trigger_value if spec.trigger_value is not None else float(data.x_train.max())
        self.label = 0 if spec.poison_label is None else spec.poison_label
        self._doctored = None
        if spec.name == "backdoor" and (self.label >= data.num_classes or max(self.trigger) >= data.num_features):
            from ..errors import ConfigError

            raise ConfigError(
                f"attack: poison_label must be < {data.num_classes} classes and trigger indices "
                f"< {data.num_features} features"
            )

    def doctored(self):
        """The attackers' training data (label_flip, backdoor), built once."""
        if self._doctored is None:
            if self.spec.name == "label_flip":
                self._doctored = poison.flip_labels(self.data, self.attackers)
            else:
                share = min(1.0, (self.spec.poisoning_per_batch or 4) / self.batch_size)
                self._doctored, _ = poison.poison_rows(
                    self.data, self.attackers, share, self.trigger, self.trigger_value, self.label, self.seed
                )
        return self._doctored

    def apply(self, rnd: int, res, retrain: Callable):
        """``res`` (a cohort's training result) with the attackers' updates replaced from ``start_round`` on.
        ``retrain(data, clients)`` trains ``clients`` again on ``data`` the way the round trained them."""
        bad = [i for i, c in enumerate(res.clients) if c in self.attackers]
        if rnd < self.spec.start_round or not bad:
            return res
        diffs, loss = res.diffs.clone(), res.train_loss.clone()
        name = self.spec.name
        if name in ("label_flip", "backdoor"):
            again = retrain(self.doctored(), [res.clients[i] for i in bad])
            gamma = (self.spec.gamma or 1.0) if name == "backdoor" else 1.0
            diffs[bad] = gamma * again.diffs
            loss[bad] = again.train_loss
        else:
            good = [i for i in range(len(res.clients)) if i not in bad]
            honest = res.diffs[good] if good else res.diffs[bad]  # [h, params]
            for i in bad:
                diffs[i] = self._update(name, honest, len(res.clients), len(bad), rnd, res.clients[i])
        return dataclasses.replace(res, diffs=diffs, train_loss=loss)

    def _update(self, name: str, honest: torch.Tensor, n: int, f: int, rnd: int, client: int) -> torch.Tensor:
        s = self.spec
        if name == "sign_flip":
            return updates.sign_flip(honest, 1.0 if s.scale is None else s.scale)
        if name == "ipm":
            return updates.ipm(honest, 0.5 if s.epsilon is None else s.epsilon)
        if name == "alie":
            return updates.alie(honest, updates.alie_z(n, f) if s.z is None else s.z)
        gen = torch.Generator().manual_seed(client_seed(self.seed, rnd, client, _ATTACK_TAG))
        return updates.gaussian(honest.shape[1], 1.0 if s.std is None else s.std, gen)

    def row(self, rnd: int, row: dict) -> dict:
        """Round.extras: the attackers among the aggregated clients, and the backdoor's success."""
        out = {"attackers": sum(1 for c in row.get("clients", []) if c in self.attackers)}
        if self.spec.name == "backdoor" and self.server is not None:
            srv = self.server
            out["backdoor_accuracy"] = poison.backdoor_accuracy(
                srv.model, srv.global_vec, srv.x_eval, srv.y_eval, self.trigger, self.trigger_value, self.label
            )
        return out


def make_attack(cfg, data, server=None) -> Attack | None:
    """The run's attackers (None without an ``attack`` section)."""
    if cfg.attack is None:
        return None
    return Attack(cfg.attack, data, cfg.seed, cfg.batch_size, server)
