"""The ``fedloom`` command.

    fedloom run -c CONF [--set key=value ...] [--out DIR]
    fedloom report DIR
    fedloom experiment {fl-vs-central,fl-vs-local,compression,he} -c CONF [--set ...] [--out DIR]

Exit codes: 0 success, 2 bad usage/config/data (one line on stderr), 1 internal failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from .errors import FLAG_WORDS, FedloomError, user_words
from .experiments import EXPERIMENTS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedloom", description="A federated-learning lab.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def conf_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", required=True, help="JSON, YAML or TOML config (the book's conf.json works)")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key; dotted keys reach sections (partition.alpha=0.3)",
        )
        sp.add_argument("--out", help="output directory (default runs/<name>-<time>); must be empty or new")
        sp.add_argument("--overwrite", action="store_true", help="replace the fedloom run already in --out")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    run = sub.add_parser("run", help="train a federation and write metrics, summary, figures, report")
    conf_args(run)
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (same config)")
    rep = sub.add_parser("report", help="re-render the figures and report.md of a run directory")
    rep.add_argument("dir")
    keygen = sub.add_parser("keygen", help="write a Paillier key pair for secure aggregation (secret file 0600)")
    keygen.add_argument("dir")
    keygen.add_argument("--key-bits", type=int, default=2048)
    keygen.add_argument("--allow-weak-keys", action="store_true", help="permit fewer than 2048 bits")
    keygen.add_argument("--overwrite", action="store_true")
    exp = sub.add_parser("experiment", help="run one of the book's comparisons")
    exp.add_argument("name", choices=EXPERIMENTS)
    conf_args(exp)
    try:  # server, client, certs: the Flower runtime (flwr itself is imported only when one runs)
        from .flower.cli import add_parsers
    except ImportError:  # pragma: no cover - a broken optional package must not break `fedloom run`
        pass
    else:
        add_parsers(sub)
    return p


class _Progress:
    """A rich progress bar showing round, accuracy and loss (silent when quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None

    def __enter__(self):
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self.bar.__enter__()
        return self

    def task(self, description: str, total: int):
        return self.bar.add_task(description, total=total, info="") if self.bar else None

    def update(self, task, row: dict) -> None:
        if self.bar is not None and task is not None:
            info = f"acc {row['accuracy']:.3f}  loss {row['loss']:.3f}" + (
                "" if row.get("applied", True) else "  (skipped)"
            )
            self.bar.update(task, advance=1, info=info)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _print_table(title: str, items: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for k, v in items.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def _finish_run(args, run_dir, summary: dict, state: dict, data, t0: float, title: str, keys: tuple) -> int:
    """Write summary, model, partition, figures and report; print the summary table."""
    from .report import render_run

    summary["wall_seconds"] = time.perf_counter() - t0
    partition = {"classes": data.classes, "label_counts": data.label_counts().tolist()}
    run_dir.finish(summary, state, {"partition.json": partition})
    render_run(run_dir.path)
    if not args.quiet:
        _print_table(title, {k: summary[k] for k in keys} | {"output": str(run_dir.path)})
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config

    t0 = time.perf_counter()
    cfg = load_config(args.config, args.set)
    run_dir = _prepare_out(args, cfg, cfg.name, "run")  # checks --out; writes nothing yet
    if cfg.secure.protocol == "encrypted-model":
        return _run_encrypted_model(cfg, args, t0, run_dir)
    from .params import load_into  # torch only now: a bad config or --out is refused in a fraction of a second
    from .simulation import Federation, run_federation

    fed = Federation.build(cfg)  # data errors surface here, before anything is written
    start = _resume(fed, run_dir)
    run_dir.create()
    with _Progress(args.quiet) as progress, _abandon_on_error(run_dir):
        task = progress.task(f"{cfg.name}: rounds", cfg.global_epochs)

        def on_round(row: dict) -> None:
            run_dir.append(row)
            if cfg.runtime.checkpoint:
                run_dir.checkpoint(row["round"], fed.server.global_vec, fed.server.health_table())
            progress.update(task, row)

        result = run_federation(fed, on_round, start_round=start, wall_start=t0)
    load_into(fed.model, result.global_vec)
    keys = ("final_accuracy", "final_loss", "rounds", "bytes_up", "bytes_down", "train_seconds", "client_failures")
    summary = {**result.summary, "health": result.health}
    return _finish_run(args, run_dir, summary, fed.model.state_dict(), fed.data, t0, f"{cfg.name}: summary", keys)


def _prepare_out(args: argparse.Namespace, cfg, name: str, kind: str):
    from .runs import default_out_dir, prepare_run_dir

    out = Path(args.out) if args.out else default_out_dir(name)
    return prepare_run_dir(out, cfg.to_dict(), args.overwrite, getattr(args, "resume", False), kind)


@contextlib.contextmanager
def _abandon_on_error(run_dir):
    """A user error before the first round leaves no folder behind (see RunDir.abandon)."""
    try:
        yield
    except FedloomError:
        run_dir.abandon()
        raise


def _resume(fed, run_dir) -> int:
    """The first round to run: 1, or the round after ``--resume``'s checkpoint once the federation's state is
    restored. Restoring (server, channel, RNG state) is the round loop's job: ``Federation.restore(checkpoint)``."""
    point = run_dir.resume
    if point is None:
        return 1
    restore = getattr(fed, "restore", None)
    if restore is None:
        raise FedloomError("--resume: continuing a simulated run is not available in this version (no restore)")
    restore(point.checkpoint)
    return point.round + 1


def _run_encrypted_model(cfg, args: argparse.Namespace, t0: float, run_dir) -> int:
    """The book's 15.4 (the server holds the key and keeps the model encrypted): same outputs as a run."""
    import torch

    from .data import load_data
    from .secure.encrypted_lr import run_encrypted_model

    if run_dir.resume is not None:
        raise FedloomError("--resume: the book's 15.4 encrypted-model run cannot be continued; use --overwrite")
    data = load_data(cfg)
    with _Progress(args.quiet) as progress:
        task = progress.task(f"{cfg.name}: encrypted rounds", cfg.global_epochs)

        def on_round(row: dict) -> None:
            if not run_dir.created:
                run_dir.create()  # created once the key and data are good
            run_dir.append(row)
            progress.update(task, row)

        _, summary, weights = run_encrypted_model(cfg, data, on_round)
    keys = ("final_accuracy", "final_loss", "rounds", "bytes_up", "he_encrypt_seconds", "he_decrypt_seconds")
    state = {"weight": torch.from_numpy(weights)}  # [features + 1], bias last
    return _finish_run(args, run_dir, summary, state, data, t0, f"{cfg.name}: encrypted model (book 15.4)", keys)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render_run

    for f in render_run(args.dir):
        print(f)
    print(Path(args.dir) / "report.md")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .secure.paillier import generate_keypair, save_keypair

    try:
        pk, sk = generate_keypair(args.key_bits, allow_weak_keys=args.allow_weak_keys)
        public, secret = save_keypair(pk, sk, args.dir, overwrite=args.overwrite)
    except (ValueError, OSError) as e:
        raise FedloomError(user_words(f"keygen: {e}", FLAG_WORDS)) from None
    print(f"public key: {public}\nsecret key: {secret} (mode 0600: give it only to the key holder)")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiments import run_experiment

    cfg = load_config(args.config, args.set)
    run_dir = _prepare_out(args, cfg, f"{cfg.name}-{args.name}", "experiment")  # checked before any run
    out = run_dir.path
    run_dir.create(write_config=False, reset_metrics=False)
    with _Progress(args.quiet) as progress, _abandon_on_error(run_dir):
        run_experiment(args.name, cfg, out, progress)
    run_dir.done()
    if not args.quiet:
        from rich.console import Console

        Console().print((out / "table.md").read_text(encoding="utf-8"))
        print(f"output: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    args = _parser().parse_args(argv)
    handler = (
        getattr(args, "handler", None)
        or {"run": cmd_run, "report": cmd_report, "experiment": cmd_experiment, "keygen": cmd_keygen}[args.command]
    )
    try:
        return handler(args)
    except FedloomError as e:
        print(f"fedloom: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fedloom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
