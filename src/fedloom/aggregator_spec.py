"""The ``aggregator`` config section: which rules exist, which parameters each takes, what each needs.

Torch-free on purpose: config loading imports it. ``aggregator: krum`` or ``aggregator: {name: krum, f: 2}``.
Defaults (a fedloom convention, not from the papers): ``f = ⌊0.2·n⌋`` for the ``n`` updates of the round,
lowered until the rule's condition on ``n`` holds (Krum: n ≥ 2f + 3, Bulyan: n ≥ 4f + 3); ``beta = 0.2``.
An ``f`` set in the config is checked against ``k`` when the config loads, and against the round's real
number of updates when it aggregates (failures and dropout can make it smaller).
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AggregatorConfig",
    "RULES",
    "parse_aggregator",
    "default_f",
    "resolve_f",
    "cohort_problem",
    "config_problem",
]

# rule -> the parameters it takes (anything else set in the section is refused)
RULES: dict[str, tuple[str, ...]] = {
    "mean": (),
    "median": (),
    "trimmed_mean": ("beta",),
    "krum": ("f",),
    "multikrum": ("f", "m"),
    "bulyan": ("f",),
    "geomed": ("nu", "tol", "max_iter"),
    "norm_clip": ("max_norm",),
}
# rules that handle partial updates (the book's 15.3 layer upload); the others are refused with them
PARTIAL_OK = ("mean", "median", "trimmed_mean", "norm_clip")
DEFAULT_FRACTION = 0.2  # f = ⌊0.2·n⌋ when not set


class AggregatorConfig(BaseModel):
    """``aggregator: {name, f | beta | m | max_norm | nu | tol | max_iter}`` (unset: the rule's default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "mean"
    f: int | None = Field(None, ge=0, description="krum/multikrum/bulyan: Byzantine clients tolerated")
    beta: float | None = Field(None, ge=0, lt=0.5, description="trimmed_mean: share trimmed at each end")
    m: int | None = Field(None, ge=1, description="multikrum: updates averaged (default n - f)")
    max_norm: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="norm_clip: M (default: the median update norm)"
    )
    nu: float = Field(1e-6, gt=0, description="geomed: Weiszfeld smoothing (Pillutla et al.'s nu)")
    tol: float = Field(1e-6, gt=0, description="geomed: stop when the objective improves by less than tol (rel.)")
    max_iter: int = Field(100, ge=1, description="geomed: most Weiszfeld iterations")

    # The section compares equal to its rule's name and prints as it, so code written for the plain
    # ``aggregator: NAME`` field (``cfg.aggregator != "mean"``, ``f"{cfg.aggregator}"``) keeps working.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name == other
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like every config section

    def __str__(self) -> str:
        return self.name

    @model_validator(mode="after")
    def _params_fit_rule(self) -> AggregatorConfig:
        if self.name not in RULES:
            raise ValueError(f"unknown aggregator '{self.name}'{_hint(self.name)}; known: " + ", ".join(RULES))
        takes = RULES[self.name]
        for key in ("f", "beta", "m", "max_norm"):
            if getattr(self, key) is not None and key not in takes:
                owners = [r for r, ps in RULES.items() if key in ps]
                what = ", ".join(takes) if takes else "no parameters"
                raise ValueError(f"{self.name} takes {what}; {key} is for {', '.join(owners)}")
        return self


def _hint(word: str) -> str:
    close = difflib.get_close_matches(word, list(RULES), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_aggregator(value: object) -> object:
    """Config's before-validator: a bare name becomes ``{name: NAME}``; an unknown name is one clear line."""
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, dict):
        name = value.get("name", "mean")
        if not isinstance(name, str):
            raise ValueError(f"name must be one of {', '.join(RULES)}")
        name = name.lower().replace("-", "_")
        if name not in RULES:
            raise ValueError(f"unknown aggregator '{name}'{_hint(name)}; known: " + ", ".join(RULES))
        return {**value, "name": name}
    return value


def max_f(name: str, n: int) -> int:
    """The largest ``f`` the rule accepts with ``n`` updates (-1: none)."""
    if name in ("krum", "multikrum"):
        return (n - 3) // 2  # Blanchard et al. 2017: n > 2f + 2
    if name == "bulyan":
        return (n - 3) // 4  # El Mhamdi et al. 2018: n ≥ 4f + 3
    return n


def default_f(name: str, n: int) -> int:
    """``⌊0.2·n⌋``, lowered to what the rule accepts with ``n`` updates."""
    return max(0, min(int(DEFAULT_FRACTION * n), max_f(name, n)))


def resolve_f(name: str, f: int | None, n: int) -> int:
    """The ``f`` a round with ``n`` updates uses (the configured one, else the default)."""
    return default_f(name, n) if f is None else f


def cohort_problem(name: str, f: int, n: int, m: int | None = None) -> str | None:
    """Why the rule cannot run on ``n`` updates with this ``f`` (and ``m``), or None."""
    if name in ("krum", "multikrum") and n < 2 * f + 3:
        return f"{name} needs n ≥ 2f + 3 updates (Blanchard et al. 2017), got n = {n}, f = {f}"
    if name == "bulyan" and n < 4 * f + 3:
        return f"bulyan needs n ≥ 4f + 3 updates (El Mhamdi et al. 2018), got n = {n}, f = {f}"
    if name == "multikrum" and m is not None and m > n - f:
        return f"multikrum averages m ≤ n - f updates, got m = {m}, n = {n}, f = {f}"
    return None


def config_problem(spec: AggregatorConfig, k: int, upload_codec: str) -> str | None:
    """A config-level refusal for ``spec`` with ``k`` clients per round and this upload codec, or None."""
    if spec.name not in PARTIAL_OK and "layers" in upload_codec:
        return (
            f"aggregator {spec.name} needs whole updates, but the upload codec '{upload_codec}' sends some layers "
            f"only; use one of {', '.join(PARTIAL_OK)}"
        )
    if spec.name in ("krum", "multikrum", "bulyan") and (spec.f is not None or spec.m is not None or k < 3):
        f = resolve_f(spec.name, spec.f, k)
        problem = cohort_problem(spec.name, f, k, spec.m)
        if problem:
            return f"{problem} (n is k = {k}): lower aggregator.f or raise k"
    return None
