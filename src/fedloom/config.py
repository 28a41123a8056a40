"""Run configuration: the book's conf.json keys plus named sections, validated up front.

The book's keys keep their names and meaning (《联邦学习实战》 ch.3 conf.json):
``model_name, no_models, type, global_epochs, local_epochs, k, batch_size, lr, momentum, lambda``.
New settings live in sections (``partition``, ``runtime``, ``data``). Files may be JSON, YAML or TOML;
``--set key=value`` overrides use dotted keys for sections (``--set partition.alpha=0.3``).
Every mistake becomes a :class:`~fedloom.errors.ConfigError` whose one line names the field (or ``--set``).
Fields are strict (no bool→int or str→number coercion) and finite; file reading is in ``config_files.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from .aggregator_spec import AggregatorConfig, config_problem, parse_aggregator
from .algorithm_spec import AlgorithmConfig, AlgorithmsGrid, algorithm_problem, keeps_partial_work, parse_algorithm
from .attack_spec import AttackConfig, RobustnessConfig
from .config_files import check_values, one_line, read_config_file
from .config_files import hint as _hint
from .errors import ConfigError
from .privacy.settings import PrivacyConfig, check_privacy

__all__ = ["Config", "PartitionConfig", "RuntimeConfig", "DataConfig", "CompressionConfig", "SecureConfig"]
__all__ += ["load_config", "build_config", "apply_overrides"]

DATASETS = ("iris", "wine", "breast_cancer", "digits", "mnist", "csv", "synthetic")
DOWNLOAD_DATASETS = ("cifar", "cifar10", "cifar100", "fashion_mnist", "emnist", "femnist", "imagenet")
MODELS = ("fnn", "mlp", "mlp_bn", "cnn", "logreg")
# The book's ch.3 names models after torchvision constructors (resnet18 in conf.json, resnet50 in 15.3).
TORCHVISION_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg16", "vgg19",
    "alexnet", "densenet121", "mobilenet_v2", "inception_v3", "googlenet",
)  # fmt: skip


MAX_SEED = 2**32 - 1  # numpy's legacy seeding and many tools take 32-bit seeds
MAX_WIDTH, MAX_LAYERS = 65_536, 64  # hidden: beyond these a model does not fit any machine fedloom targets
MAX_NAME = 100  # the name becomes part of a folder name


from .config_sections import (  # noqa: E402 - re-exported: the sections are part of this module's API
    _STRICT,
    CompressionConfig,
    DataConfig,
    PartitionConfig,
    RuntimeConfig,
    SecureConfig,
    SyntheticConfig,
    _check_codec,
    _Section,
)


class Config(_Section):
    """A whole run. Defaults are the seed's Iris experiment."""

    name: str = Field("fedloom", pattern=r"^[A-Za-z0-9._-]+$", min_length=1, max_length=MAX_NAME)
    # --- the book's keys ---
    model_name: str = "fnn"
    no_models: int = Field(10, ge=1, le=10_000_000, description="number of clients")
    type: str = Field("iris", description="dataset")
    global_epochs: int = Field(30, ge=1, le=10_000_000, description="rounds")
    local_epochs: int = Field(3, ge=1, le=1_000_000)
    k: int = Field(5, ge=1, description="clients sampled per round")
    batch_size: int = Field(10, ge=1)
    lr: float = Field(0.3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    lambda_: float | None = Field(None, alias="lambda", gt=0, description="server step: G += lambda*sum(diff)")
    # --- fedloom's own ---
    seed: int = Field(0, ge=0, le=MAX_SEED)
    seeds: int = Field(
        1, ge=1, le=1000, description="experiments: run seeds seed, seed+1, …, seed+seeds−1 and report mean ± std"
    )
    hidden: list[int] | None = None
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    data: DataConfig | None = None
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    secure: SecureConfig = Field(default_factory=SecureConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    aggregator: AggregatorConfig = Field(
        default_factory=AggregatorConfig,
        description="NAME or {name, f | beta | m | max_norm | ...}: mean (the book's lambda rule if lambda is set, "
        "else FedAvg), median, trimmed_mean, krum, multikrum, bulyan, geomed, norm_clip (see aggregator_spec.py)",
    )
    algorithm: AlgorithmConfig = Field(
        default_factory=AlgorithmConfig,
        description="NAME or {name, mu | server_lr | ...}: fedavg (default), fedprox, scaffold, fednova, fedavgm, "
        "fedadam, fedyogi, fedadagrad (see algorithm_spec.py)",
    )
    algorithms: AlgorithmsGrid | None = Field(None, description="the grid of `experiment algorithms`")
    attack: AttackConfig | None = Field(None, description="simulated attackers (simulation only; fedloom.attacks)")
    robustness: RobustnessConfig | None = Field(None, description="the grid of `experiment robustness`")
    # the book's ch.15 keys: 15.3 uploads the top `rate` of layers, 15.5 a fixed random `prop` mask
    rate: float | None = Field(None, gt=0, le=1, description="book 15.3: share of layers uploaded")
    feature_num: int | None = Field(None, ge=1, description="book 15.4: number of features (checked against the data)")
    prop: float | None = Field(None, gt=0, le=1, description="book 15.5: keep-probability of the fixed mask")
    sweep: list[str] | None = Field(None, description="upload codecs compared by `experiment compression`")

    model_config = ConfigDict(**_STRICT, populate_by_name=True)

    @field_validator("hidden")
    @classmethod
    def _hidden_positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(h < 1 for h in v)):
            raise ValueError("must be a non-empty list of positive layer widths, e.g. [16] or [100, 50]")
        if v is not None and (len(v) > MAX_LAYERS or max(v) > MAX_WIDTH):
            raise ValueError(f"at most {MAX_LAYERS} layers of at most {MAX_WIDTH} units each")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep_not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("is empty; list upload codecs (e.g. [none, q8, topk:0.01]) or drop it for the default")
        return v

    @field_validator("aggregator", mode="before")
    @classmethod
    def _aggregator(cls, v: Any) -> Any:
        return parse_aggregator(v)

    @field_validator("algorithm", mode="before")
    @classmethod
    def _algorithm(cls, v: Any) -> Any:
        return parse_algorithm(v)

    @field_validator("type")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        v = v.lower()
        if v in DOWNLOAD_DATASETS:
            raise ValueError(
                f"'{v}' needs a download, which fedloom does not do; put its files in a CSV and use "
                "type: csv with data.path (or data.clients), or pick one of " + ", ".join(DATASETS)
            )
        if v not in DATASETS:
            raise ValueError(f"unknown dataset '{v}'{_hint(v, DATASETS)}; known: " + ", ".join(DATASETS))
        return v

    @field_validator("model_name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        v = v.lower()
        if v in MODELS or v in TORCHVISION_MODELS:
            return v
        raise ValueError(f"unknown model '{v}'{_hint(v, MODELS + TORCHVISION_MODELS)}; known: " + ", ".join(MODELS))

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.k > self.no_models:
            raise ValueError(f"k ({self.k}) must be ≤ no_models ({self.no_models}): k clients are sampled per round")
        if self.runtime.min_clients > self.k:
            raise ValueError(f"runtime.min_clients ({self.runtime.min_clients}) must be ≤ k ({self.k})")
        if self.type == "csv" and self.data is None:
            raise ValueError("type: csv needs a data section: {path: FILE, label: COLUMN} or {clients: [...]}")
        if self.type != "csv" and self.data is not None:
            raise ValueError(f"the data section is for type: csv; type {self.type} is bundled: drop data or use csv")
        if self.lambda_ is not None and self.aggregator != "mean":
            raise ValueError(f"lambda is the mean's server step; aggregator {self.aggregator} ignores it: drop one")
        if self.rate is not None and self.prop is not None:
            raise ValueError("set only one of rate (book 15.3) and prop (book 15.5)")
        if (self.rate is not None or self.prop is not None) and self.compression.up != "none":
            raise ValueError("rate/prop set the upload codec; do not also set compression.up")
        if self.type == "synthetic" and self.partition.method != "iid":
            raise ValueError("type: synthetic is partitioned by its generator (one teacher per client); drop partition")
        if self.type == "synthetic":  # eval_fraction's default: fedprox's own split refuses any other value
            default = type(self).model_fields["eval_fraction"].default
            if problem := self.synthetic.problem(self.no_models, self.eval_fraction, default):
                raise ValueError(problem)
        if self.runtime.bn == "fedbn" and self.model_name in ("fnn", "mlp", "cnn", "logreg"):
            raise ValueError(f"runtime.bn: fedbn keeps BatchNorm local; '{self.model_name}' has none (use mlp_bn)")
        if self.compression.error_feedback:  # the flag form of +ef, also with the book's prop/rate
            from .channel import split_ef

            try:
                _check_codec(split_ef(self.upload_codec)[0] + "+ef", allow_ef=True)
            except ValueError as e:
                raise ValueError(f"compression.error_feedback: {e}") from None
        problem = config_problem(self.aggregator, self.k, self.upload_codec)
        if problem:
            raise ValueError(f"aggregator: {problem}")
        problem = algorithm_problem(
            self.algorithm,
            lam=self.lambda_,
            aggregator=self.aggregator.name,
            secure=self.secure.method != "none",
            privacy=self.privacy.enabled,
        )
        if problem:
            raise ValueError(f"algorithm: {problem}")
        rt = self.runtime
        partial = keeps_partial_work(self.algorithm.name, rt.straggler_work)
        if rt.stragglers > 0 and partial and self.local_epochs < 2:
            raise ValueError(
                "runtime.stragglers keep partial work (1..local_epochs−1 epochs), which needs local_epochs ≥ 2; "
                "raise local_epochs or set runtime.straggler_work: drop"
            )
        left = self.k - int(round(rt.stragglers * self.k))
        if rt.stragglers > 0 and not partial and rt.sampling == "fixed" and left < rt.min_clients:
            raise ValueError(
                f"runtime.stragglers {rt.stragglers:g} drops {self.k - left} of k = {self.k} clients each round, "
                f"leaving {left}, fewer than runtime.min_clients {rt.min_clients}: no round would be applied"
            )
        if self.attack is not None and self.attack.check(self.no_models):
            raise ValueError(self.attack.check(self.no_models))
        self._check_secure()
        check_privacy(self)
        for i, spec in enumerate(self.sweep or []):
            try:
                self.sweep[i] = _check_codec(spec, allow_ef=True)
            except ValueError as e:
                raise ValueError(f"sweep: {e}") from None
        if self.data is not None and self.data.clients and len(self.data.clients) != self.no_models:
            raise ValueError(f"data.clients lists {len(self.data.clients)} files but no_models is {self.no_models}")
        return self

    def _check_secure(self) -> None:
        sec = self.secure
        if sec.method == "none":
            if sec.protocol == "encrypted-model":
                raise ValueError("secure.protocol encrypted-model needs secure.method: paillier")
            return
        bad = [c for c in sec.key_holders if not 0 <= c < self.no_models]
        if bad:
            raise ValueError(f"secure.key_holders {bad}: client ids are 0..{self.no_models - 1}")
        if self.aggregator.name != "mean":
            raise ValueError(
                f"aggregator '{self.aggregator.name}' is not linear: secure aggregation can only add updates "
                "(robust rules need each update in the clear); use mean"
            )
        if self.upload_codec != "none":
            raise ValueError(
                "secure aggregation sums ciphertexts, so uploads cannot also be compressed by a codec "
                "(packed Paillier quantizes with secure.bits); remove compression.up/rate/prop"
            )
        if sec.protocol == "encrypted-model":
            if sec.method != "paillier" or self.model_name != "logreg":
                raise ValueError(
                    "secure.protocol encrypted-model is the book's 15.4: method paillier, model_name logreg"
                )
            if self.lambda_ is None:  # momentum is accepted and unused, as in the book's 15.4 conf.json
                raise ValueError("secure.protocol encrypted-model takes the book's server step: set lambda")
        if sec.method == "paillier" and sec.protocol == "secagg":
            from .secure.packing import Packer

            try:
                Packer(sec.key_bits, sec.bits, sec.clip, max_summands=self.k)
            except ValueError as e:
                raise ValueError(f"secure: {e}") from None

    @property
    def rounds(self) -> int:
        return self.global_epochs

    @property
    def upload_codec(self) -> str:
        """The upload codec spec, with the book's ``rate``/``prop`` keys translated."""
        if self.rate is not None:
            return f"layers:{self.rate}"
        if self.prop is not None:
            return f"mask:{self.prop}"
        return self.compression.up

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, with the book's spelling of ``lambda``."""
        return self.model_dump(by_alias=True, mode="json")


def _parse_value(text: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, lists, true/null), else the plain string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with ``key=value`` overrides applied (dotted keys reach into sections)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set k=3 or --set partition.alpha=0.3")
        node = out
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: empty part in the key '{key.strip()}'")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = child
        parsed = _parse_value(value.strip())
        check_values(parsed, f"--set {item}", key.strip())
        node[parts[-1]] = parsed
    return out


def build_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line(e, Config, source)) from None


def _short_item(item: str, limit: int = 60) -> str:
    return item if len(item) <= limit else item[: limit - 3] + "..."


def _blame(err: ValidationError, raw: dict[str, Any], overrides: list[str], source: str) -> str:
    """Name ``--set`` rather than the file when an override caused the problem."""
    loc = ".".join(str(p) for p in err.errors()[0].get("loc", ()))
    for item in reversed(overrides):
        key = item.partition("=")[0].strip()
        if loc and (loc == key or loc.startswith(key + ".") or key.startswith(loc + ".")):
            return one_line(err, Config, f"--set {_short_item(item)}")
    if not loc:  # a rule across fields: the overrides are to blame if the file alone passes
        try:
            Config.model_validate(raw)
        except ValidationError:
            return one_line(err, Config, source)
        return one_line(err, Config, f"{source} with --set {' --set '.join(map(_short_item, overrides))}")
    return one_line(err, Config, source)


def load_config(path: str | Path | dict | Config | None, overrides: list[str] | None = None) -> Config:
    """Read a JSON/YAML/TOML config (or the defaults when ``path`` is None) and apply overrides.

    Relative paths in the file are relative to the file's folder; those given with ``--set`` to the
    current folder (where the command was typed)."""
    if isinstance(path, (dict, Config)):  # notebooks build configs in code
        raw = path.to_dict() if isinstance(path, Config) else path
        check_values(raw, "config")
        path = None
    else:
        raw = read_config_file(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "config"
    overrides = overrides or []
    try:
        return Config.model_validate(apply_overrides(raw, overrides))
    except ValidationError as e:
        raise ConfigError(_blame(e, raw, overrides, source) if overrides else one_line(e, Config, source)) from None
