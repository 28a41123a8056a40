"""The ``fedloom`` command.

    fedloom run -c CONF [--set key=value ...] [--out DIR] [--tensorboard]
    fedloom report DIR
    fedloom keygen DIR
    fedloom experiment {fl-vs-central,fl-vs-local,compression,he} -c CONF [--set ...] [--seeds N] [--out DIR]

Exit codes: 0 success, 2 bad usage/config/data (one line on stderr), 1 internal failure.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import textwrap
import time
from pathlib import Path

from . import __version__
from .errors import FLAG_WORDS, FedloomError, user_words
from .experiments import EXPERIMENTS

__all__ = ["main"]

# what `fedloom experiment --help` says each comparison does
EXPERIMENT_HELP = {
    "fl-vs-central": "FL vs centralized training (book §3.6): the config's federation against one party holding "
    "every training row, at local epochs 1, 2, 3",
    "fl-vs-local": "FL vs each party alone (book §3.7): the federated model (at k and about k/2) against every "
    "client's own single-party model, all on the common eval set",
    "compression": "accuracy vs upload bytes (book 15.3/15.5 and more): the same federation under a sweep of "
    "upload codecs (fp16, q8..q2, sign, top-k, random mask, layers), with the Pareto front",
    "he": "what encryption costs in secure aggregation: plaintext vs per-value Paillier vs packed Paillier vs "
    "CKKS, seconds per round by role and upload bytes",
    "algorithms": "federated optimizers side by side (issue 15): each algorithm of algorithms.compare (default all "
    "eight) at each straggler fraction, on the same partition and seeds: final accuracy, rounds to a target, bytes",
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line on stderr, exit 2 (argparse's own prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedloom", description="A federated-learning lab.")
    p.add_argument("--version", action="version", version=f"fedloom {__version__}")
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
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log metrics, figures and config for TensorBoard under OUT/tb (runtime.tensorboard)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last checkpoint (same config: ends where an "
        "uninterrupted run ends)",
    )
    rep = sub.add_parser("report", help="re-render the figures and report.md of a run or experiment folder")
    rep.add_argument("dir", metavar="DIR", help="a folder written by `fedloom run` or `fedloom experiment`")
    keygen = sub.add_parser("keygen", help="write a Paillier key pair for secure aggregation (secret file 0600)")
    keygen.add_argument(
        "dir",
        metavar="DIR",
        help="folder for paillier_public.json and paillier_secret.json; use it as secure.key_dir "
        "(keep it out of version control)",
    )
    keygen.add_argument("--key-bits", type=int, default=2048, help="modulus size in bits (default 2048)")
    keygen.add_argument("--allow-weak-keys", action="store_true", help="permit fewer than 2048 bits")
    keygen.add_argument("--overwrite", action="store_true", help="replace a key pair already in DIR")
    exp = sub.add_parser(
        "experiment",
        help="run one of the book's comparisons",
        description="Run one of the book's comparisons; each writes summary.json, table.md and figures.\n\n"
        + "\n".join(
            textwrap.fill(text, 100, initial_indent=f"  {name:<15}", subsequent_indent=" " * 17)
            for name, text in EXPERIMENT_HELP.items()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("name", choices=EXPERIMENTS, metavar="NAME", help="one of: " + ", ".join(EXPERIMENTS))
    conf_args(exp)
    exp.add_argument("--seeds", type=_positive_int, metavar="N", help="seeds seed..seed+N-1; rows report mean ± std")
    try:  # server, client, certs: the Flower runtime (flwr itself is imported only when one runs)
        from .flower.cli import add_parsers
    except ImportError:  # pragma: no cover - a broken optional package must not break `fedloom run`
        pass
    else:
        add_parsers(sub)
    return p


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _check_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A typo'd subcommand gets a "did you mean" (argparse alone lists every choice)."""
    from .config import _hint

    word = next((a for a in argv if not a.startswith("-")), None)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if word is not None and word not in sub.choices and not any(a in ("-h", "--help", "--version") for a in argv):
        parser.error(f"unknown command '{word}'{_hint(word, list(sub.choices))}; commands: " + ", ".join(sub.choices))


def _summary_items(res) -> tuple[dict, list[str]]:
    """What the run prints: the main numbers, best_accuracy with its small-eval caveat, then notes."""
    from .notes import eval_step_caveat

    s = res.summary
    keys = ["final_accuracy", "best_accuracy", "final_loss", "rounds", "bytes_up", "bytes_down", "train_seconds"]
    keys += ["client_failures"] if res.config.secure.protocol != "encrypted-model" else ["he_encrypt_seconds"]
    items = {k: s[k] for k in keys if k in s}
    caveat = eval_step_caveat(s.get("eval_samples"), short=True)
    if caveat and isinstance(items.get("best_accuracy"), float):
        items["best_accuracy"] = f"{items['best_accuracy']:.4f} ({caveat})"
    if s.get("encrypted"):
        items["encrypted"] = s["encrypted"]
    items["output"] = str(res.path)
    return items, list(s.get("notes", []))


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config

    t0 = time.perf_counter()
    # the config is checked before torch is imported: a typo is reported in a fraction of a second
    cfg = load_config(args.config, args.set + (["runtime.tensorboard=true"] if args.tensorboard else []))
    from .figures import start_worker, stop_worker

    start_worker()  # imports matplotlib on a free core while this process imports torch and trains
    try:
        from .console import Progress, print_summary
        from .runner import execute
        from .runs import default_out_dir

        out = Path(args.out) if args.out else default_out_dir(cfg.name)
        with Progress(args.quiet) as progress:
            res = execute(cfg, out, progress, t0, resume=args.resume, overwrite=args.overwrite)
    finally:
        stop_worker()  # not used (the run failed before its figures): ended
    if not args.quiet:
        title = f"{cfg.name}: " + (
            "encrypted model (book 15.4)" if cfg.secure.protocol == "encrypted-model" else "summary"
        )
        print_summary(title, *_summary_items(res))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render_folder

    for f in render_folder(args.dir):
        print(f)
    for name in ("report.md", "table.md"):  # a run's report, an experiment's table
        if (Path(args.dir) / name).is_file():
            print(Path(args.dir) / name)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .extras import require

    require("gmpy2")
    from .secure.paillier import generate_keypair, save_keypair

    try:
        pk, sk = generate_keypair(args.key_bits, allow_weak_keys=args.allow_weak_keys)
        public, secret = save_keypair(pk, sk, args.dir, overwrite=args.overwrite)
    except (ValueError, OSError) as e:
        raise FedloomError(user_words(f"keygen: {e}", FLAG_WORDS)) from None
    print(f"public key: {public}\nsecret key: {secret} (mode 0600: give it only to the key holder)")
    warning = secret_in_work_tree(secret)
    if warning:
        print(f"fedloom: warning: {warning}", file=sys.stderr)
    return 0


def secret_in_work_tree(path: Path) -> str | None:
    """A warning when a secret file lies inside a git work tree (where `git add -A` would commit it)."""
    import subprocess

    path = Path(path).resolve()
    top = next((d for d in path.parents if (d / ".git").exists()), None)
    if top is None:
        return None
    try:  # is it ignored? (git may be absent: then say so plainly and warn anyway)
        ignored = (
            subprocess.run(
                ["git", "-C", str(top), "check-ignore", "-q", str(path)], capture_output=True, timeout=10
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        ignored = False
    how = "git ignores it here, but copies of this folder may not" if ignored else "git does NOT ignore it"
    return (
        f"the secret key {path} is inside the git work tree {top} ({how}); keep secret keys outside "
        "repositories, or make sure they are never committed"
    )


def cmd_experiment(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.set + ([f"seeds={args.seeds}"] if args.seeds else []))
    from .api import experiment_dir
    from .console import Progress, print_text
    from .experiments import run_experiment

    out = Path(args.out) if args.out else experiment_dir(cfg.name, args.name)
    with Progress(args.quiet) as progress:
        run_experiment(args.name, cfg, out, progress, overwrite=getattr(args, "overwrite", False))
    if not args.quiet:
        print_text((out / "table.md").read_text(encoding="utf-8"))  # plain: a pipe or a log keeps the table
        print(f"output: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``fedloom`` program (``argv`` None: the command line, and the process ends after it)."""
    code = _main(argv)
    if argv is None:
        # The process exits next, and the interpreter's shutdown would walk every object still alive (torch's
        # modules, the run's tensors) in one last garbage collection: ~0.4 s of the 2.5 s Iris demo on the lab
        # machine, for memory the OS takes back anyway. Frozen objects are left out of it; files, atexit
        # handlers and finalizers behave as before.
        gc.freeze()
    return code


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    _check_command(parser, argv)
    args = parser.parse_args(argv)
    handler = (
        getattr(args, "handler", None)
        or {"run": cmd_run, "report": cmd_report, "experiment": cmd_experiment, "keygen": cmd_keygen}[args.command]
    )
    try:
        return handler(args)
    except FedloomError as e:
        print(f"fedloom: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        from .extras import missing_extra

        hint = missing_extra(e)
        if hint is None:
            raise
        print(f"fedloom: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedloom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
