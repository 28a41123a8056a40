"""The ``algorithm`` config section: which federated optimizer runs, and its parameters.

Torch-free on purpose: config loading imports it. ``algorithm: fedprox`` or ``algorithm: {name: fedprox, mu: 1}``.
Each algorithm lives in ``fedloom/algorithms/`` (one file each, citing its paper); this module only says which
parameters each takes, their defaults and which combinations with the rest of a config are refused.

Parameters and the papers' symbols:

- ``mu``: FedProx's μ (Li et al., MLSys 2020, eq. 2), the weight of the proximal term μ/2‖w − w_t‖².
- ``server_lr``: the server's step size η (Reddi et al., ICLR 2021, Algorithm 2; η_g of SCAFFOLD, Karimireddy
  et al., ICML 2020, Algorithm 1).
- ``server_momentum``: FedAvgM's β (Hsu, Qi & Brown 2019): ``v ← βv + Δ``.
- ``beta1``, ``beta2``, ``tau``: β₁, β₂ and the adaptivity τ of FedAdam / FedYogi / FedAdagrad (Reddi et al.).

Defaults are fedloom's choices inside the ranges the papers tried (stated in each algorithm's module).
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AlgorithmConfig",
    "AlgorithmsGrid",
    "ALGORITHMS",
    "SERVER_OPTIMIZERS",
    "parse_algorithm",
    "algorithm_problem",
    "keeps_partial_work",
]

# algorithm -> the parameters it takes (anything else set in the section is refused)
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "fedavg": (),
    "fedprox": ("mu",),
    "scaffold": ("server_lr",),
    "fednova": (),
    "fedavgm": ("server_lr", "server_momentum"),
    "fedadam": ("server_lr", "beta1", "beta2", "tau"),
    "fedyogi": ("server_lr", "beta1", "beta2", "tau"),
    "fedadagrad": ("server_lr", "tau"),
}
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")  # FedOpt: the mean update is a pseudo-gradient
_DEFAULTS: dict[str, dict[str, float]] = {
    "fedprox": {"mu": 0.01},
    "scaffold": {"server_lr": 1.0},
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.9},
    "fedadam": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_lr": 0.1, "tau": 1e-3},
}
_PARAMS = ("mu", "server_lr", "server_momentum", "beta1", "beta2", "tau")


class AlgorithmConfig(BaseModel):
    """``algorithm: {name, mu | server_lr | server_momentum | beta1 | beta2 | tau}``; an unset parameter takes the
    algorithm's default (:meth:`param`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    name: str = "fedavg"
    mu: float | None = Field(None, ge=0, le=1e6, description="fedprox: μ of the proximal term μ/2‖w − w_global‖²")
    server_lr: float | None = Field(None, gt=0, le=1e3, description="server step size η (FedOpt, SCAFFOLD's η_g)")
    server_momentum: float | None = Field(None, ge=0, lt=1, description="fedavgm: β of v ← βv + Δ")
    beta1: float | None = Field(None, ge=0, lt=1, description="fedadam/fedyogi: first-moment decay β₁")
    beta2: float | None = Field(None, ge=0, lt=1, description="fedadam/fedyogi: second-moment decay β₂")
    tau: float | None = Field(None, gt=0, le=1, description="fedadam/fedyogi/fedadagrad: adaptivity τ")

    def __eq__(self, other: object) -> bool:  # `cfg.algorithm == "fedprox"` reads naturally
        if isinstance(other, str):
            return self.name == other
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return self.name

    def param(self, key: str) -> float:
        """The parameter ``key`` as set, else the algorithm's default."""
        value = getattr(self, key)
        return float(_DEFAULTS[self.name][key] if value is None else value)

    def label(self) -> str:
        """``fedprox(mu=1)``: the name with the parameters set explicitly (for tables and legends)."""
        extra = ",".join(f"{k}={getattr(self, k):g}" for k in _PARAMS if getattr(self, k) is not None)
        return f"{self.name}({extra})" if extra else self.name

    @model_validator(mode="after")
    def _params_fit(self) -> AlgorithmConfig:
        if self.name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm '{self.name}'{_hint(self.name)}; known: " + ", ".join(ALGORITHMS))
        takes = ALGORITHMS[self.name]
        for key in _PARAMS:
            if getattr(self, key) is not None and key not in takes:
                owners = [a for a, ps in ALGORITHMS.items() if key in ps]
                what = ", ".join(takes) if takes else "no parameters"
                raise ValueError(f"{self.name} takes {what}; {key} is for {', '.join(owners)}")
        return self


def _hint(word: str) -> str:
    close = difflib.get_close_matches(word, list(ALGORITHMS), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_algorithm(value: object) -> object:
    """Config's before-validator: a bare name becomes ``{name: NAME}``; names are case-insensitive."""
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, dict):
        name = value.get("name", "fedavg")
        if not isinstance(name, str):
            raise ValueError("name must be one of " + ", ".join(ALGORITHMS))
        name = name.lower().replace("-", "").replace("_", "")
        if name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm '{name}'{_hint(name)}; known: " + ", ".join(ALGORITHMS))
        unknown = [k for k in value if k not in ("name", *_PARAMS)]
        if unknown:
            close = difflib.get_close_matches(unknown[0], _PARAMS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown parameter '{unknown[0]}'{hint}; {name} takes " + _takes(name))
        return {**value, "name": name}
    return value


def _takes(name: str) -> str:
    return ", ".join(ALGORITHMS[name]) if ALGORITHMS[name] else "no parameters"


class AlgorithmsGrid(BaseModel):
    """The grid of ``fedloom experiment algorithms``: the algorithms compared (each a name or an ``algorithm``
    section), the straggler fractions tried (default: the config's ``runtime.stragglers``) and the accuracy
    whose first round is reported (default: none, then that column is left out)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    compare: list[AlgorithmConfig] = Field(
        default_factory=lambda: [AlgorithmConfig(name=n) for n in ALGORITHMS], min_length=1
    )
    stragglers: list[float] | None = Field(None, min_length=1, description="straggler fractions, each in [0, 1)")
    target: float | None = Field(None, gt=0, le=1, description="accuracy whose first round is reported")

    @model_validator(mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, dict) and isinstance(value.get("compare"), list):
            value = {**value, "compare": [parse_algorithm(a) for a in value["compare"]]}
        return value

    @model_validator(mode="after")
    def _fractions(self) -> AlgorithmsGrid:
        for f in self.stragglers or []:
            if not 0 <= f < 1:
                raise ValueError(f"stragglers: {f} is not a fraction in [0, 1)")
        return self


def keeps_partial_work(algorithm: str, straggler_work: str) -> bool:
    """Whether stragglers' partial work is aggregated (``runtime.straggler_work``; ``auto``: FedProx and FedNova,
    built for uneven local work, keep it; the others drop stragglers, as FedAvg does in FedProx's experiments)."""
    if straggler_work == "auto":
        return algorithm in ("fedprox", "fednova")
    return straggler_work == "partial"


def algorithm_problem(
    algorithm: AlgorithmConfig,
    *,
    lam: float | None,
    aggregator: str,
    secure: bool,
    privacy: bool,
) -> str | None:
    """Why ``algorithm`` cannot run with the rest of the config (one line), or None."""
    name = algorithm.name
    if lam is not None and name not in ("fedavg", "fedprox"):
        step = "server_lr" if "server_lr" in ALGORITHMS[name] else "its normalized step"
        return f"lambda is FedAvg's server step; {name} steps with {step}: drop lambda"
    if privacy and name not in ("fedavg", "fedprox"):
        return f"privacy (DP-FedAvg) replaces the server step; {name} is not built with it: use fedavg or fedprox"
    if name in ("scaffold", "fednova") and aggregator != "mean":
        return f"{name} corrects the weighted mean of the updates; aggregator {aggregator} is not a mean: use mean"
    if name == "scaffold" and secure:
        return (
            "scaffold with secure aggregation would need the clients' control-variate changes summed under "
            "encryption too (a second encrypted vector per client); not built: use fedavg, fedprox, fednova or FedOpt"
        )
    return None
