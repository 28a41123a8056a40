"""What fedloom prints: a progress bar on a terminal, tables that survive a pipe or a log file.

Piped or logged, rich assumes an 80-column terminal and wraps long lines, which breaks markdown tables;
so off a terminal we print plain text (markdown tables) and never hand tables to rich.
"""

from __future__ import annotations

import sys

__all__ = ["Progress", "print_summary", "print_text", "is_terminal"]


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """A rich progress bar showing round, accuracy and loss on a terminal; off a terminal (a pipe, a log)
    one plain line per finished federation; nothing when quiet.

    Experiments and runs call ``task(description, total)`` once per federation and ``update(task, row)``
    once per round."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self._plain: dict[int, list] = {}  # task id -> [description, total, rounds done]

    def __enter__(self):
        if not self.quiet and is_terminal():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
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
        if self.bar is not None:
            return self.bar.add_task(description, total=total, info="")
        if self.quiet:
            return None
        self._plain[len(self._plain)] = [description, total, 0]
        return len(self._plain) - 1

    def update(self, task, row: dict) -> None:
        if task is None:
            return
        info = f"acc {row['accuracy']:.3f}  loss {row['loss']:.3f}" + (
            "" if row.get("applied", True) else "  (skipped)"
        )
        if row.get("epsilon") is not None:  # privacy: the budget spent so far
            info += f"  ε {row['epsilon']:.3g}"
        if self.bar is not None:
            self.bar.update(task, advance=1, info=info)
            return
        entry = self._plain[task]
        entry[2] += 1
        if entry[2] == entry[1]:
            print(f"{entry[0]}: {entry[1]} rounds, {info}", flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_summary(title: str, items: dict, notes: list[str] = ()) -> None:
    """A two-column table (rich on a terminal, a markdown table otherwise), then one line per note."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        for k, v in items.items():
            table.add_row(k, _fmt(v))
        Console().print(table)
    else:
        print(f"## {title}\n\n| metric | value |\n|---|---|")
        for k, v in items.items():
            print(f"| {k} | {_fmt(v)} |")
        print()
    for note in notes:
        print(f"note: {note}")


def print_text(text: str) -> None:
    """Plain text as is: no markup, no wrapping (tables stay tables in a pipe or a log)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
