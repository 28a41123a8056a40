"""The config's sections (``partition``, ``runtime``, ``compression``, ``secure``, ``synthetic``, ``data``):
each a strict pydantic model whose fields say what they mean; :mod:`fedloom.config` assembles them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError

__all__ = [
    "PartitionConfig",
    "RuntimeConfig",
    "CompressionConfig",
    "SecureConfig",
    "SyntheticConfig",
    "DataConfig",
]

# strict: no silent coercion (true is not 1, "3" is not 3); no Infinity/NaN anywhere
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, strict=True, allow_inf_nan=False)
MAX_SYNTHETIC_VALUES = 2**29  # rows × features of the synthetic set: 2 GB of float32


class _Section(BaseModel):
    model_config = _STRICT


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
    threads: Annotated[int, Field(ge=1, le=4096)] | Literal["auto"] = Field(
        "auto", description="torch intra-op threads; auto: measured on the run's kernels (fedloom.threads)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the vectorized engine and evaluation run; auto: cuda when present (fedloom.device)"
    )
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
    sampling: Literal["fixed", "poisson"] = Field(
        "fixed", description="fixed: k of no_models without replacement; poisson: each joins w.p. k/no_models"
    )
    bn: Literal["fedavg", "fedbn"] = Field(
        "fedavg", description="BatchNorm state: fedavg averages it with the parameters; fedbn keeps it per client"
    )
    stragglers: float = Field(
        0.0, ge=0, lt=1, description="share of each cohort that cannot finish its local epochs this round"
    )
    straggler_work: Literal["auto", "drop", "partial"] = Field(
        "auto",
        description="drop: stragglers' work is discarded; partial: they send 1..E-1 epochs of work; "
        "auto: partial for fedprox and fednova, drop for the others",
    )
    tensorboard: bool = Field(False, description="log metrics, figures and config under the run folder's tb/")


def _check_codec(spec: str, allow_ef: bool) -> str:
    from .channel import split_ef  # late: codecs import config's errors module only
    from .codecs import check_error_feedback, parse_codec

    body, ef = split_ef(spec)
    if ef and not allow_ef:
        raise ValueError("error feedback (+ef) applies to the upload only")
    try:
        codec = parse_codec(body.lower())
        if ef:
            check_error_feedback(codec)  # randk/mask with +ef would diverge
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return spec.strip().lower()  # codec names are case-insensitive: Q8 is q8


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
    key_bits: int = Field(2048, ge=256, le=16384, description="Paillier modulus bits")
    allow_weak_keys: bool = Field(False, description="permit key_bits < 2048 (to reproduce the book's 1024)")
    bits: int = Field(16, ge=1, le=32, description="packed Paillier: quantization bits per value")
    clip: float = Field(0.5, gt=0, le=1e6, description="packed Paillier: values are clipped to ±clip")
    key_dir: str | None = Field(None, description="load the key pair written by `fedloom keygen DIR`")
    workers: int = Field(1, ge=1, le=1024, description="processes the key holder decrypts with")
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
    key_holders: list[int] = Field(
        [0], min_length=1, description="over Flower: the client ids the server may ask to decrypt (not self-declared)"
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
    """``type: synthetic``: Synthetic(alpha, beta) (see data/synthetic.py). ``generator: leaf`` (default) rescales
    the power-law client sizes to ``num_samples`` rows and lends ``eval_fraction`` of each client's rows to the
    eval set; ``fedprox`` is FedProx's own generator: each device draws its size (``int(lognormal(4, 2)) + 50``)
    and keeps its last 10 % rows as its test rows, the eval set being all devices' test rows; ``fedprox_iid``
    is FedProx's Synthetic-IID (one teacher, one input law for all devices; alpha and beta take no part).
    A field the generator does not use stays unset (null), and setting it is refused."""

    generator: Literal["leaf", "fedprox", "fedprox_iid"] = Field(
        "leaf", description="leaf: sizes rescaled to num_samples; fedprox / fedprox_iid: FedProx's generator scripts"
    )
    num_samples: int | None = Field(
        None, ge=2, description="leaf: rows over all clients (train + eval), default 20 000; fedprox: drawn, unset"
    )
    dim: int = Field(60, ge=1)
    classes: int = Field(10, ge=2)
    alpha: float | None = Field(
        None,
        ge=0,
        le=100,
        description="std of u_k, the mean of W_k and b_k (FedProx: 0..1; default 1); it shifts "
        "all logits alike, so it changes no label (data/synthetic.py)",
    )
    beta: float | None = Field(
        None, ge=0, le=100, description="std of B_k, the mean of the inputs' means v_k (FedProx: 0..1; default 1)"
    )

    @model_validator(mode="before")
    @classmethod
    def _generator_defaults(cls, value: object) -> object:
        """Fill the fields the generator uses with their defaults; those it does not use stay None."""
        if not isinstance(value, dict):
            return value
        generator = value.get("generator", "leaf")
        if not isinstance(generator, str):  # not a name: the field's own check says what is expected
            return value
        defaults = {"leaf": _LEAF_DEFAULTS, "fedprox": _FEDPROX_DEFAULTS}.get(generator, {})
        return {**value, **{k: v for k, v in defaults.items() if value.get(k) is None}}

    @model_validator(mode="after")
    def _fits(self) -> SyntheticConfig:
        unused = [k for k in ("num_samples", "alpha", "beta") if getattr(self, k) is not None]
        unused = [k for k in unused if k not in _USES[self.generator]]
        if unused:
            why = "each device draws its size" if unused[0] == "num_samples" else "one teacher labels every device"
            raise ValueError(f"synthetic.{unused[0]} does not apply to generator {self.generator} ({why}): drop it")
        if self.num_samples is not None and self.num_samples * self.dim > MAX_SYNTHETIC_VALUES:
            raise ValueError(
                f"synthetic.num_samples × synthetic.dim is {self.num_samples * self.dim:,}; at most "
                f"{MAX_SYNTHETIC_VALUES:,} values (2 GB of float32) are generated"
            )
        return self

    def problem(self, no_models: int, eval_fraction: float, default_eval_fraction: float) -> str | None:
        """Why this section does not fit the rest of the config (one line), or None."""
        if self.generator == "leaf" and self.num_samples < 2 * no_models:
            return f"synthetic.num_samples must give each of the {no_models} clients at least 2 rows"
        if self.generator != "leaf" and eval_fraction != default_eval_fraction:
            return (
                f"eval_fraction does not apply to synthetic.generator {self.generator}: each device keeps its last "
                "10 % rows as its test rows (FedProx's split) and the eval set is their union; drop eval_fraction"
            )
        return None


_LEAF_DEFAULTS = {"num_samples": 20_000, "alpha": 1.0, "beta": 1.0}
_FEDPROX_DEFAULTS = {"alpha": 1.0, "beta": 1.0}
_USES = {"leaf": ("num_samples", "alpha", "beta"), "fedprox": ("alpha", "beta"), "fedprox_iid": ()}


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
