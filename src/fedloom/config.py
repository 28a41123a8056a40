"""Run configuration: the book's conf.json keys plus named sections, validated up front.

The book's keys keep their names and meaning (《联邦学习实战》 ch.3 conf.json):
``model_name, no_models, type, global_epochs, local_epochs, k, batch_size, lr, momentum, lambda``.
New settings live in sections (``partition``, ``runtime``, ``data``). Files may be JSON, YAML or TOML;
``--set key=value`` overrides use dotted keys for sections (``--set partition.alpha=0.3``).
Every mistake becomes a :class:`~fedloom.errors.ConfigError` whose one line names the field.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .aggregator_spec import AggregatorConfig, config_problem, parse_aggregator
from .attack_spec import AttackConfig, RobustnessConfig
from .errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "Config",
    "PartitionConfig",
    "RuntimeConfig",
    "DataConfig",
    "CompressionConfig",
    "SecureConfig",
    "load_config",
    "build_config",
    "apply_overrides",
]

DATASETS = ("iris", "wine", "breast_cancer", "digits", "mnist", "csv", "synthetic")
DOWNLOAD_DATASETS = ("cifar", "cifar10", "cifar100", "fashion_mnist", "emnist", "femnist", "imagenet")
MODELS = ("fnn", "mlp", "mlp_bn", "cnn", "logreg")
# The book's ch.3 names models after torchvision constructors (resnet18 in conf.json, resnet50 in 15.3).
TORCHVISION_MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg16", "vgg19",
    "alexnet", "densenet121", "mobilenet_v2", "inception_v3", "googlenet",
)  # fmt: skip


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class PartitionConfig(_Section):
    """How the training set is split among clients (see :mod:`fedloom.data.partition`)."""

    method: Literal["iid", "contiguous", "dirichlet", "shards", "quantity"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (dirichlet, quantity)")
    shards_per_client: int = Field(2, ge=1, description="label-sorted shards per client (shards)")
    min_size: int = Field(1, ge=0, description="smallest client shard the dirichlet/quantity draw accepts")


class RuntimeConfig(_Section):
    """How the federation is executed (simulation today)."""

    engine: Literal["auto", "vectorized", "sequential"] = Field(
        "auto", description="auto: vectorized when the model allows it, else sequential"
    )
    chunk: int | None = Field(
        None, ge=1, description="clients the vectorized engine trains together (default: sized from free memory)"
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")
    dropout: float = Field(0.0, ge=0, lt=1, description="probability a sampled client fails this round")
    min_clients: int = Field(1, ge=1, description="fewest answers with which a round still counts")
    round_timeout: float | None = Field(
        None, gt=0, description="seconds a deployed round waits for answers before going on with the survivors"
    )
    client_memory_mb: float | None = Field(
        None, gt=0, description="memory each simulated client may use; a client needing more refuses"
    )
    checkpoint: bool = True
    max_client_samples: int = Field(
        10_000_000, ge=1, description="the most rows a client may declare (a deployed client declaring more is refused)"
    )
    max_update_norm: float = Field(
        1e4, gt=0, allow_inf_nan=False, description="an update whose L2 norm is larger fails its client's round"
    )
    bn: Literal["fedavg", "fedbn"] = Field(
        "fedavg", description="BatchNorm state: fedavg averages it with the parameters; fedbn keeps it per client"
    )


def _check_codec(spec: str, allow_ef: bool) -> str:
    from .channel import split_ef  # late: codecs import config's errors module only
    from .codecs import check_error_feedback, parse_codec

    body, ef = split_ef(spec)
    if ef and not allow_ef:
        raise ValueError("error feedback (+ef) applies to the upload only")
    try:
        codec = parse_codec(body)
        if ef:
            check_error_feedback(codec)  # randk/mask with +ef would diverge
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return spec


class CompressionConfig(_Section):
    """Update compression (see :mod:`fedloom.codecs`): a codec spec per direction, e.g. ``topk:0.01+q8``."""

    up: str = Field("none", description="upload codec; a trailing +ef adds error feedback")
    down: str = Field("none", description="download codec (the global model)")
    error_feedback: bool = False

    @field_validator("up")
    @classmethod
    def _up(cls, v: str) -> str:
        return _check_codec(v, allow_ef=True)

    @field_validator("down")
    @classmethod
    def _down(cls, v: str) -> str:
        return _check_codec(v, allow_ef=False)


class SecureConfig(_Section):
    """Homomorphic encryption (see :mod:`fedloom.secure`)."""

    method: Literal["none", "paillier", "paillier-per-value", "ckks"] = "none"
    protocol: Literal["secagg", "encrypted-model"] = Field(
        "secagg", description="secagg: the server holds no key; encrypted-model: the book's 15.4"
    )
    key_bits: int = Field(2048, ge=256, description="Paillier modulus bits")
    allow_weak_keys: bool = Field(False, description="permit key_bits < 2048 (to reproduce the book's 1024)")
    bits: int = Field(16, ge=1, le=32, description="packed Paillier: quantization bits per value")
    clip: float = Field(0.5, gt=0, description="packed Paillier: values are clipped to ±clip")
    key_dir: str | None = Field(None, description="load the key pair written by `fedloom keygen DIR`")
    workers: int = Field(1, ge=1, description="processes the key holder decrypts with")
    weight_ref: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="w_ref: clients encrypt (w_i/w_ref)·diff_i; default: the average client's weight (simulation), "
        "1 with the book's lambda rule; over Flower with FedAvg it must be set (about the average client's rows)",
    )
    min_summands: int = Field(
        2, ge=1, description="fewest client updates an aggregate must hold before the key holder decrypts it"
    )

    @model_validator(mode="after")
    def _strength(self) -> SecureConfig:
        if self.key_bits < 2048 and not self.allow_weak_keys:
            raise ValueError(
                f"secure.key_bits {self.key_bits} is below 2048 (about 112-bit security); "
                "set secure.allow_weak_keys: true to reproduce the book's 1024-bit setting"
            )
        return self


class SyntheticConfig(_Section):
    """``type: synthetic``: the LEAF / FedProx Synthetic(alpha, beta) generator (see data/synthetic.py)."""

    num_samples: int = Field(20_000, ge=2, description="rows over all clients (train + eval)")
    dim: int = Field(60, ge=1)
    classes: int = Field(10, ge=2)
    alpha: float = Field(1.0, ge=0, description="how much the clients' models differ")
    beta: float = Field(1.0, ge=0, description="how much the clients' inputs differ")


class DataConfig(_Section):
    """Files for ``type: csv``: one table split by ``partition``, or one file per client."""

    path: str | None = None
    clients: list[str] | None = None
    eval: str | None = None
    label: str = "label"

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path is None and not self.clients:
            raise ValueError("set data.path (one table) or data.clients (one file per client)")
        if self.path is not None and self.clients:
            raise ValueError("set only one of data.path and data.clients")
        return self


class Config(_Section):
    """A whole run. Defaults are the seed's Iris experiment."""

    name: str = Field("fedloom", pattern=r"^[A-Za-z0-9._-]+$")
    # --- the book's keys ---
    model_name: str = "fnn"
    no_models: int = Field(10, ge=1, description="number of clients")
    type: str = Field("iris", description="dataset")
    global_epochs: int = Field(30, ge=1, description="rounds")
    local_epochs: int = Field(3, ge=1)
    k: int = Field(5, ge=1, description="clients sampled per round")
    batch_size: int = Field(10, ge=1)
    lr: float = Field(0.3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    lambda_: float | None = Field(None, alias="lambda", gt=0, description="server step: G += lambda*sum(diff)")
    # --- fedloom's own ---
    seed: int = Field(0, ge=0)
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
    aggregator: AggregatorConfig = Field(
        default_factory=AggregatorConfig,
        description="NAME or {name, f | beta | m | max_norm | ...}: mean (the book's lambda rule if lambda is set, "
        "else FedAvg), median, trimmed_mean, krum, multikrum, bulyan, geomed, norm_clip (see aggregator_spec.py)",
    )
    attack: AttackConfig | None = Field(None, description="simulated attackers (simulation only; fedloom.attacks)")
    robustness: RobustnessConfig | None = Field(None, description="the grid of `experiment robustness`")
    # the book's ch.15 keys: 15.3 uploads the top `rate` of layers, 15.5 a fixed random `prop` mask
    rate: float | None = Field(None, gt=0, le=1, description="book 15.3: share of layers uploaded")
    feature_num: int | None = Field(None, ge=1, description="book 15.4: number of features (checked against the data)")
    prop: float | None = Field(None, gt=0, le=1, description="book 15.5: keep-probability of the fixed mask")
    sweep: list[str] | None = Field(None, description="upload codecs compared by `experiment compression`")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    @field_validator("hidden")
    @classmethod
    def _hidden_positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(h < 1 for h in v)):
            raise ValueError("must be a non-empty list of positive layer widths, e.g. [16] or [100, 50]")
        return v

    @field_validator("aggregator", mode="before")
    @classmethod
    def _aggregator(cls, v: Any) -> Any:
        return parse_aggregator(v)

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
        if self.rate is not None and self.prop is not None:
            raise ValueError("set only one of rate (book 15.3) and prop (book 15.5)")
        if (self.rate is not None or self.prop is not None) and self.compression.up != "none":
            raise ValueError("rate/prop set the upload codec; do not also set compression.up")
        if self.type == "synthetic" and self.partition.method != "iid":
            raise ValueError("type: synthetic is partitioned by its generator (one teacher per client); drop partition")
        if self.type == "synthetic" and self.synthetic.num_samples < 2 * self.no_models:
            raise ValueError(f"synthetic.num_samples must give each of the {self.no_models} clients at least 2 rows")
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
        if self.attack is not None and self.attack.check(self.no_models):
            raise ValueError(self.attack.check(self.no_models))
        self._check_secure()
        for spec in self.sweep or []:
            try:
                _check_codec(spec, allow_ef=True)
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


def _hint(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_for(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for did-you-mean hints)."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        if field is None:
            return None
        ann = field.annotation
        model = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return model


def _one_line(err: ValidationError, source: str) -> str:
    """The first validation problem as one line naming the field."""
    e = err.errors()[0]
    loc = tuple(e.get("loc", ()))
    field = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        owner = _model_for(loc)
        names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        return f"{source}: unknown key '{field}'{_hint(str(loc[-1]), names)}"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    shown = "" if isinstance(got, dict) or e["type"] in ("value_error", "missing") else f" (got {got!r})"
    return f"{source}: field '{field}': {msg}{shown}" if field else f"{source}: {msg}"


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text)
        elif suffix == ".toml":
            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return raw


def _parse_value(text: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, lists, true/null), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with ``key=value`` overrides applied (dotted keys reach into sections)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set k=3 or --set partition.alpha=0.3")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(value.strip())
    return out


def build_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a JSON/YAML/TOML config (or the defaults when ``path`` is None) and apply overrides."""
    raw = _read_file(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "config"
    cfg = build_config(apply_overrides(raw, overrides or []), source)
    if cfg.data is not None and path is not None:
        cfg = _resolve_data_paths(cfg, Path(path).parent)
    return cfg


def _resolve_data_paths(cfg: Config, base: Path) -> Config:
    """Relative data paths are relative to the config file, as a user reading the file expects."""

    def fix(p: str | None) -> str | None:
        if p is None or Path(p).is_absolute() or Path(p).exists():
            return p
        return str(base / p)

    d = cfg.data
    data = d.model_copy(
        update={"path": fix(d.path), "eval": fix(d.eval), "clients": [fix(c) for c in d.clients] if d.clients else None}
    )
    return cfg.model_copy(update={"data": data})
