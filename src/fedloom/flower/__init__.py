"""The Flower runtime: fedloom's federation over real processes and a real network.

``fedloom server`` starts a Flower SuperLink and submits a generated Flower app whose ServerApp
(``server_app.py``, round loop in ``coordinator.py``) runs the simulation's own Server, Channel, aggregators
and codecs; ``fedloom client`` starts a SuperNode and runs the ClientApp in its own warm process
(``executor.py``, ``worker.py``). ``protocol.py`` is what travels; ``launch.py`` starts and stops the Flower
pieces; ``proxy.py`` is the public address (Flower's Fleet API only; the SuperLink listens on loopback);
``identity.py`` holds the client keys and signatures; ``certs.py`` makes a test CA and client keys. Only this
package imports flwr; importing it alone does not.
"""

from __future__ import annotations

from ..config import Config
from ..errors import FedloomError

__all__ = ["FLWR_RANGE", "require_flwr", "check_deployable"]

FLWR_RANGE = ((1, 42), (1, 43))  # executor.py uses flwr's Runtime API client, internal to flwr 1.42


def require_flwr() -> str:
    """flwr's version, or a FedloomError that says how to install it."""
    try:
        import flwr
    except ImportError:
        raise FedloomError("the Flower runtime needs flwr: pip install 'fedloom[flower]'") from None
    version = getattr(flwr, "__version__", "0")
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    low, high = FLWR_RANGE
    if not low <= major_minor < high:
        raise FedloomError(
            f"fedloom's Flower runtime needs flwr {low[0]}.{low[1]}.x, found {version}: pip install 'fedloom[flower]'"
        )
    return version


def check_deployable(cfg: Config) -> None:
    """Refuse, with the reason, what the Flower runtime does not run: secure aggregation runs with
    ``secure.method`` paillier or paillier-per-value, ``protocol: secagg`` and a ``secure.key_dir``."""
    from .secure import deploy_refusal

    reason = deploy_refusal(cfg)
    if cfg.runtime.bn == "fedbn":
        reason = "runtime.bn: fedbn runs in the simulation only; a deployed client does not keep local BatchNorm yet"
    if cfg.attack is not None:
        reason = "attack: the simulated attackers run in the simulation only (fedloom run); remove the attack section"
    if reason:
        raise FedloomError(reason)
