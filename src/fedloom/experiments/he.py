"""What homomorphic encryption costs in FL (the seed's 3rd experiment): secure aggregation, side by side.

Methods, all on the same federation: ``none`` (plaintext fp32), ``paillier-per-value`` (one ciphertext per
value, the textbook way), ``paillier`` (BatchCrypt-style packing) and ``ckks`` (TenSEAL). Per-value Paillier
at 2048 bits handles ~200 values/s, hours for a neural net: when its full run would exceed
``_FULL_RUN_BUDGET`` seconds it is timed on a sample of values and extrapolated, and its row says
``estimate``. Seconds per round are split by role: one client's encryption, the server's additions and the
key holder's decryption (clients encrypt in parallel in a real federation, so the client figure is per client).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..config import Config
from ..data import load_data
from ..report import new_figure, save_figure
from .common import as_written, derive, refuse, render_config, run_with_progress, write_outputs, write_table
from .seeds import cell, merge_seeds, seed_list

__all__ = ["run", "render", "METHODS"]

METHODS = ("none", "paillier-per-value", "paillier", "ckks")
_FULL_RUN_BUDGET = 120.0  # seconds: longer per-value runs are extrapolated from a timed sample
_SAMPLE = 100  # values timed for the per-value estimate


def _check(cfg: Config) -> None:
    """Settings that secure aggregation cannot take, refused before anything runs (one line naming the key)."""
    if cfg.upload_codec != "none":
        key = "rate" if cfg.rate is not None else "prop" if cfg.prop is not None else "compression.up"
        refuse(
            "he",
            f"{key} sets the upload codec '{cfg.upload_codec}', but secure aggregation adds uncompressed updates "
            f"(a codec would change only the plaintext row); remove {key}",
        )
    if cfg.aggregator.name != "mean":
        refuse("he", f"aggregator '{cfg.aggregator.name}' is not linear: secure aggregation can only add; use mean")
    if cfg.secure.protocol != "secagg":
        refuse(
            "he",
            f"secure.protocol '{cfg.secure.protocol}' is the book's 15.4 (run it with `fedloom run`); "
            "this experiment compares secure aggregation (secure.protocol: secagg)",
        )


def _plans(cfg: Config, methods: list[str]) -> list[list[Config]]:
    """[seeds][methods] configs, validated before anything runs."""
    return [
        [
            derive(cfg, {"seed": s, "seeds": 1, "sweep": None, "secure": {"method": m}}, f"he ({m}, seed {s})")
            for m in methods
        ]
        for s in seed_list(cfg)
    ]


def _one_seed(configs: list[Config], progress, estimate: bool | None) -> tuple[list[dict], bool | None]:
    """One seed's rows; ``estimate`` (None: decide now) says whether per-value Paillier is extrapolated."""
    data = load_data(configs[0])
    rows = []
    for mcfg in configs:
        method = mcfg.secure.method
        if method == "paillier-per-value":
            est = _per_value_estimate(mcfg, data, force=estimate)
            estimate = est is not None
            if est is not None:
                rows.append(est)
                continue
        res = run_with_progress(mcfg, data, progress, f"{method}, seed {mcfg.seed}")
        rows.append(_row(method, res.summary, mcfg))
    fp32 = rows[0]["bytes_up_per_round"]
    for r in rows:
        r["expansion"] = r["bytes_up_per_round"] / fp32
        r["bytes_per_value"] = r["bytes_up_per_round"] / (configs[0].k * rows[0]["num_params"])
    return rows, estimate


def run(cfg: Config, out: Path, progress=None) -> dict:
    _check(cfg)
    seeds = seed_list(cfg)
    skipped = [] if _has_tenseal() else ["ckks"]
    methods = [m for m in METHODS if m not in skipped]
    plans = _plans(cfg, methods)
    per_seed, estimate = [], None
    for configs in plans:
        rows, estimate = _one_seed(configs, progress, estimate)  # the first seed decides run or estimate
        per_seed.append(rows)
    rows = merge_seeds(per_seed, ("method", "num_params"))
    rows += [{"method": m, "note": "skipped: TenSEAL not installed (pip install 'fedloom[he]')"} for m in skipped]
    out.mkdir(parents=True, exist_ok=True)
    summary = {"experiment": "he", "seed": cfg.seed, "seeds": seeds, "config": cfg.to_dict(), "results": rows}
    summary = as_written(summary)  # drawn from the numbers as summary.json holds them, as `fedloom report` does
    _figures(out, cfg, summary)
    return write_outputs(out, summary, *_table(cfg, summary))


def render(folder: Path, summary: dict) -> list[Path]:
    """Redraw the figure and rewrite ``table.md`` from the folder's ``summary.json``."""
    cfg = render_config(folder, summary)
    figures = _figures(folder, cfg, summary)
    write_table(folder, *_table(cfg, summary))
    return figures


def _figures(out: Path, cfg: Config, summary: dict) -> list[Path]:
    measured = [r for r in summary["results"] if "bytes_up_per_round_mean" in r]  # not the skipped methods
    return [_plot(measured, out / "figures" / "he_costs.png", cfg, len(summary["seeds"]))]


_NUMBERS = [
    "accuracy",
    "client_s_per_round",
    "server_s_per_round",
    "decrypt_s_per_round",
    "bytes_up_per_round",
    "bytes_per_value",
    "expansion",
]


def _table(cfg: Config, summary: dict) -> tuple[list[dict], list[str], str, str]:
    """table.md's rows, columns, title and notes."""
    seeds, rows = summary["seeds"], summary["results"]
    table = [{"method": r["method"], **{n: cell(r, n) for n in _NUMBERS}, "note": r.get("note", "")} for r in rows]
    spread = f"mean ± sample std over seeds {seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else f"seed {cfg.seed}"
    notes = (
        f"{cfg.type}, {cfg.model_name}, {rows[0]['num_params']} parameters, k={cfg.k}, {cfg.global_epochs} rounds, "
        f"{spread}, Paillier {cfg.secure.key_bits} bits "
        f"(packed: {cfg.secure.bits}-bit slots, clip ±{cfg.secure.clip}). "
        "client = one client's encryption per round; server = adding ciphertexts; decrypt = the key holder."
    )
    return table, ["method", *_NUMBERS, "note"], "Homomorphic encryption in FL: cost per round", notes


def _has_tenseal() -> bool:
    try:
        import tenseal  # noqa: F401
    except ImportError:
        return False
    return True


def _row(method: str, s: dict, cfg: Config, note: str = "") -> dict:
    rounds = max(1, s["rounds_applied"])
    per = lambda key: s.get(key, 0.0) / rounds  # noqa: E731
    return {
        "method": method,
        "accuracy": s["final_accuracy"],
        "num_params": s["num_params"],
        "client_s_per_round": per("he_encrypt_seconds") / cfg.k,
        "server_s_per_round": per("he_aggregate_seconds"),
        "decrypt_s_per_round": per("he_decrypt_seconds"),
        "bytes_up_per_round": s["bytes_up"] / rounds,
        "train_s_per_round": s["train_seconds"] / rounds,
        "note": note,
    }


def _per_value_estimate(cfg: Config, data, force: bool | None = None) -> dict | None:
    """Time encrypt/add/decrypt on a sample; None when the full run fits the budget (then it is run).

    ``force`` True/False overrides the budget (every seed follows the first seed's choice)."""
    if force is False:
        return None
    from ..secure import make_keyholder, make_server_cipher

    holder = make_keyholder(cfg.secure, cfg.k)
    cipher, server = holder.client_cipher(), make_server_cipher(cfg.secure.method, holder.public_bytes())
    rng = np.random.default_rng(cfg.seed)
    sample = rng.normal(0, 0.01, _SAMPLE)
    t0 = time.perf_counter()
    payloads = [cipher.encrypt(sample, 1, rng) for _ in range(cfg.k)]
    t1 = time.perf_counter()
    agg = server.add(payloads)
    t2 = time.perf_counter()
    holder.decrypt(agg, cfg.k, _SAMPLE)
    t3 = time.perf_counter()
    from ..models import build_model

    params = sum(
        p.numel()
        for p in build_model(
            cfg.model_name, data.num_features, data.num_classes, cfg.hidden, data.image_shape
        ).parameters()
    )
    scale = (params + 1) / (_SAMPLE + 1)  # +1: the weight ciphertext
    enc, add, dec = (t1 - t0) / cfg.k * scale, (t2 - t1) * scale, (t3 - t2) * scale
    if force is None and (enc * cfg.k + add + dec) * cfg.global_epochs <= _FULL_RUN_BUDGET:
        return None
    return {
        "method": cfg.secure.method,
        "accuracy": None,
        "num_params": params,
        "client_s_per_round": enc,
        "server_s_per_round": add,
        "decrypt_s_per_round": dec,
        "bytes_up_per_round": len(payloads[0]) * scale * cfg.k,
        "train_s_per_round": None,
        "note": f"estimate: timed on {_SAMPLE} values, extrapolated to {params}; not run",
    }


def _plot(rows: list[dict], path: Path, cfg: Config, seeds: int) -> Path:
    """Time per round by role and upload bytes; error bars are ± the sample std over seeds. An extrapolated
    row's bars are hatched and labelled, not only its tick: its numbers were not measured on a run."""
    fig, (ax_t, ax_b) = new_figure(1, 2, figsize=(12, 4.6))
    x = np.arange(len(rows))
    estimated = ["estimate" in (r.get("note") or "") for r in rows]
    parts = [
        ("client encrypt", "client_s_per_round", "#1565c0"),
        ("server add", "server_s_per_round", "#ef6c00"),
        ("key holder decrypt", "decrypt_s_per_round", "#2e7d32"),
    ]
    err = lambda r, key: (r[f"{key}_std"] or 0.0) if seeds > 1 else 0.0  # noqa: E731
    for i, (label, key, color) in enumerate(parts):
        vals = [r[f"{key}_mean"] or float("nan") for r in rows]  # no bar where nothing is encrypted
        bars = ax_t.bar(x + (i - 1) * 0.27, vals, 0.27, yerr=[err(r, key) for r in rows], capsize=2, label=label,
                        color=color)  # fmt: skip
        _hatch(bars, estimated)
    for xi, r in zip(x, rows):
        if not any(r[f"{key}_mean"] for _, key, _ in parts):
            ax_t.annotate("no encryption", (xi, 0.1), xycoords=("data", "axes fraction"), ha="center", fontsize=8)
    ax_t.set_yscale("log")
    ax_t.set_xlim(-0.75, len(rows) - 0.4)  # room for the "no encryption" note inside the axes
    names = [r["method"] + (" (est.)" if est else "") for r, est in zip(rows, estimated)]
    ax_t.set_xticks(x, names, fontsize=8)
    spread = f", mean ± std over {seeds} seeds" if seeds > 1 else ""
    ax_t.set(ylabel="seconds per round (log)", title=f"time per round by role{spread}")
    handles = ax_t.get_legend_handles_labels()[0]
    ax_t.set_ylim(top=ax_t.get_ylim()[1] * 30)  # headroom (log axis): the legend sits above every bar
    ax_t.legend(handles=handles + ([_estimate_key()] if any(estimated) else []), fontsize=8, loc="upper center",
                ncols=2)  # fmt: skip
    bars = ax_b.bar(x, [r["bytes_up_per_round_mean"] for r in rows], yerr=[err(r, "bytes_up_per_round") for r in rows],
                    capsize=2, color="#6a1b9a")  # fmt: skip
    _hatch(bars, estimated)
    for xi, r, est in zip(x, rows, estimated):
        ax_b.annotate(f"{r['expansion_mean']:.1f}×" + ("\nestimate" if est else ""), (xi, r["bytes_up_per_round_mean"]),
                      ha="center", fontsize=8, xytext=(0, 3), textcoords="offset points")  # fmt: skip
    ax_b.set_yscale("log")
    ax_b.set_ylim(top=ax_b.get_ylim()[1] * 3)  # room for the labels above the tallest bar
    ax_b.set_xticks(x, names, fontsize=8)
    ax_b.set(ylabel="upload bytes per round (log)", title="upload per round (× fp32)")
    for ax in (ax_t, ax_b):
        ax.grid(axis="y", alpha=0.3, which="both")
    fig.suptitle(f"HE costs: {cfg.type}, {cfg.model_name}, k={cfg.k}")
    return save_figure(fig, path)


def _estimate_key():
    """The legend entry for hatched bars."""
    from matplotlib.patches import Patch

    return Patch(facecolor="#9e9e9e", edgecolor="white", hatch="///", label="hatched: estimate (not run)")


def _hatch(bars, estimated: list[bool]) -> None:
    for bar, est in zip(bars, estimated):
        if est:
            bar.set_hatch("///")
            bar.set_edgecolor("white")  # the hatch lines take the edge colour
