"""The fedloom ClientApp: Flower messages in, :class:`~fedloom.flower.worker.ClientWorker` answers out.

:func:`make_client_app` wraps a warm worker; ``fedloom client`` runs it inside its own long-lived process
(see ``executor.py``), so no message ever pays for a fresh process that imports flwr and torch again.

The module-level ``app`` is what the generated Flower app names as its ``clientapp`` component. It is only
ever loaded if somebody points a stock SuperNode (``--isolation subprocess``) at a fedloom federation; it
imports no torch and answers every message with an error that says how to join instead.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from .protocol import MESSAGE_TYPES, pack, unpack

__all__ = ["make_client_app", "app"]

_NOT_A_FEDLOOM_CLIENT = 1001  # Flower error code space: ours start above flwr's ErrorCode values


def make_client_app(handle: Callable[[str, dict], dict]) -> ClientApp:
    """A ClientApp whose handlers unpack the request, call ``handle(kind, fields)`` and pack its answer."""
    capp = ClientApp()

    def answer(kind: str) -> Callable[[Message, Context], Message]:
        def fn(msg: Message, context: Context) -> Message:
            reply = handle(kind, unpack(kind, msg.content))
            return Message(pack(kind, reply, reply=True), reply_to=msg)

        return fn

    for kind, mtype in MESSAGE_TYPES.items():
        category, _, action = mtype.partition(".")
        register = getattr(capp, category)  # capp.train() / capp.query("hello"): decorator factories
        (register(action) if action else register())(answer(kind))
    return capp


app = ClientApp()


def _refuse(msg: Message, context: Context) -> Message:
    reason = "fedloom clients join with `fedloom client -c CONF --server HOST:PORT --client-id I`"
    return Message(Error(_NOT_A_FEDLOOM_CLIENT, reason), reply_to=msg)


for _kind, _mtype in MESSAGE_TYPES.items():
    _category, _, _action = _mtype.partition(".")
    _register = getattr(app, _category)
    (_register(_action) if _action else _register())(_refuse)
