"""Plain-language notes on a run's numbers, printed under its summary and written into summary.json and
report.md, so nobody reads a run at chance, or a flat loss, as learning.

Each function reads only what a run folder holds (summary, metrics rows, resolved config), so
``fedloom report`` can write the same notes for an old folder.
"""

from __future__ import annotations

import math

__all__ = ["run_notes", "eval_step_caveat", "encryption_line", "LOSS_FLAT"]

LOSS_FLAT = 0.01  # relative change of the eval loss below which a run "did not move" (book ch.3 on Iris: 0.3 %)
_SMALL_EVAL = 200  # eval rows: below this one row is worth more than half a point of accuracy


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def chance_note(final_accuracy: float | None, num_classes: int | None) -> str | None:
    if final_accuracy is None or not num_classes or not math.isfinite(final_accuracy):
        return None
    chance = 1.0 / num_classes
    if final_accuracy > chance + 1e-9:
        return None
    return (
        f"final accuracy {final_accuracy:.4f} is at or below chance (1/{num_classes} = {chance:.3f}): "
        "the model has not learned to tell the classes apart"
    )


def loss_note(rows: list[dict]) -> str | None:
    """When the eval loss over the rounds moved by less than LOSS_FLAT of its size."""
    losses = _finite(r.get("loss") for r in rows)
    if len(losses) < 2:
        return None
    high, low = max(losses), min(losses)
    if high <= 0 or (high - low) / high >= LOSS_FLAT:
        return None
    return (
        f"the eval loss moved less than {LOSS_FLAT:.0%} over {len(rows)} rounds "
        f"({losses[0]:.4f} → {losses[-1]:.4f}): training barely changed the model "
        "(look at lr, local_epochs, batch_size, lambda and the number of rounds)"
    )


def eval_step_caveat(eval_samples: int | None, short: bool = False) -> str | None:
    """On a small eval set accuracy moves in coarse steps, and the best round is picked on that same set.
    ``short``: the few words printed beside best_accuracy."""
    if not eval_samples or eval_samples >= _SMALL_EVAL:
        return None
    if short:
        return f"{eval_samples} eval rows: steps of {100 / eval_samples:.1f} points"
    return (
        f"eval set of {eval_samples} rows: accuracy moves in steps of {100 / eval_samples:.1f} points, "
        "and best_accuracy is the best round on that same set (optimistic)"
    )


def encryption_line(cfg: dict) -> str | None:
    """What encrypted the run, from the resolved config (None for a plaintext run)."""
    sec = cfg.get("secure") or {}
    method = sec.get("method", "none")
    if method == "none":
        return None
    if sec.get("protocol") == "encrypted-model":
        return (
            f"yes: the book's 15.4 encrypted model (Paillier {sec.get('key_bits')}-bit); "
            "clients update the encrypted global model; the server holds the key (uploads are hidden from other "
            "clients and outsiders, not from the server)"
        )
    name = {"paillier": "packed Paillier", "paillier-per-value": "per-value Paillier", "ckks": "CKKS"}[method]
    bits = f" {sec.get('key_bits')}-bit" if method != "ckks" else ""
    return f"yes: secure aggregation with{bits} {name}; the server added ciphertexts and held no secret key"


def run_notes(summary: dict, rows: list[dict], num_classes: int | None) -> list[str]:
    """The notes a reader of this run should see, most important first."""
    notes = [
        chance_note(summary.get("final_accuracy"), num_classes),
        loss_note(rows),
        eval_step_caveat(summary.get("eval_samples")),
    ]
    return [n for n in notes if n]
