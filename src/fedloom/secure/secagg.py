"""Secure aggregation with additively homomorphic encryption: the server adds what it cannot read.

The protocol (as FATE's and NVFLARE's HE aggregation; the opposite of the book's 15.4, where the server holds
the key) runs four stages a round, one function each, on an explicit state record:

    ENCRYPT   each client i encrypts  (w_i / w_ref)·diff_i  and its integer weight w_i   (public key)
    ADD       the ciphertexts are multiplied: the aggregate encrypts Σ and Σ w_i             (public key)
              (the server adds them to check them; the key holder adds them again itself)
    DECRYPT   the key holder (clients' side) decrypts a sum it verified, never a single update (secret key)
    APPLY     the server applies  finish(G, w_ref·Σ, Σ w_i)  with its linear aggregator   (no key)

``w_i`` is the aggregator's client weight (``n_i`` for FedAvg, 1 for the book's λ rule), so both rules work.
Sample counts travel in clear too (signed over Flower): the encrypted ``w_i`` is not a secret but a check,
since the key holder refuses a sum whose encrypted weights differ from the declared counts' (``guard.py``).
``w_ref`` (``secure.weight_ref``, by default the weight of an average-sized client) is a public constant that
keeps ``(w_i/w_ref)·diff_i`` in the range the packing's ``clip`` covers; it cancels in the result.
Only linear aggregators qualify (config loading rejects the others).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch

from ..aggregators import Aggregator
from .base import ClientCipher, Decrypted, ServerCipher

__all__ = ["Stage", "SecAggState", "encrypt_update", "add_updates", "decrypt_aggregate", "apply_aggregate"]


class Stage(Enum):
    ENCRYPT = 1
    ADD = 2
    DECRYPT = 3
    APPLY = 4


@dataclass
class SecAggState:
    round: int
    cohort: list[int]  # clients whose encrypted updates are expected
    stage: Stage = Stage.ENCRYPT
    payloads: dict[int, bytes] = field(default_factory=dict)
    aggregate: bytes | None = None
    result: Decrypted | None = None

    def expect(self, stage: Stage) -> None:
        if self.stage is not stage:
            raise RuntimeError(
                f"secure aggregation round {self.round}: expected stage {stage.name}, at {self.stage.name}"
            )


def encrypt_update(
    state: SecAggState,
    cipher: ClientCipher,
    client: int,
    diff: torch.Tensor,
    weight: float,
    weight_ref: float,
    rng: np.random.Generator,
) -> bytes:
    """Client side: encrypt ``(weight/weight_ref)·diff`` ``[params]`` and ``weight``; records the payload."""
    state.expect(Stage.ENCRYPT)
    if client not in state.cohort:
        raise ValueError(f"client {client} is not in round {state.round}'s cohort")
    if weight != int(weight):
        raise ValueError(f"secure aggregation sums integer weights; got {weight}")
    scaled = diff.detach().double().numpy() * (weight / weight_ref)
    payload = cipher.encrypt(scaled, int(weight), rng)
    state.payloads[client] = payload
    return payload


def add_updates(state: SecAggState, server: ServerCipher) -> bytes:
    """Server side: the encrypted sum of every payload received (the survivors of the round)."""
    state.expect(Stage.ENCRYPT)
    if not state.payloads:
        raise ValueError(f"round {state.round}: no encrypted update to add")
    state.aggregate = server.add([state.payloads[c] for c in sorted(state.payloads)])
    state.stage = Stage.ADD
    return state.aggregate


def decrypt_aggregate(state: SecAggState, holder, length: int, contributions: list) -> Decrypted:
    """Key holder: decrypt the sum of the round's ``contributions`` (``secure/guard.py``: it checks them and
    adds them itself; it never decrypts a single update, nor an aggregate the server made)."""
    state.expect(Stage.ADD)
    state.result = holder.decrypt_round(state.round, contributions, length)
    state.stage = Stage.DECRYPT
    return state.result


def apply_aggregate(
    state: SecAggState, aggregator: Aggregator, global_vec: torch.Tensor, weight_ref: float
) -> torch.Tensor:
    """Server side: the new global vector from the decrypted sums."""
    state.expect(Stage.DECRYPT)
    if not aggregator.linear:
        raise ValueError(f"aggregator {aggregator.name} is not linear: secure aggregation cannot apply it")
    total = torch.from_numpy(state.result.values * weight_ref).to(global_vec.dtype)  # Σ w_i·diff_i
    state.stage = Stage.APPLY
    return aggregator.finish(global_vec, total, float(state.result.weight))
