"""Run the ClientApp inside the long-lived ``fedloom client`` process, for a SuperNode in process isolation.

A stock SuperNode (``--isolation subprocess``) hands each message to a SuperExec that starts a fresh
``flwr-clientapp`` process: ~1.4 s here to import flwr alone, before the app imports torch (~2.2 s) and
loads its data. ``fedloom client`` starts its SuperNode with ``--isolation process`` instead (Flower's mode
for a ClientApp process managed outside the SuperNode) and plays that outside role itself: it polls the
SuperNode's Runtime API for tasks (``AcquireTask``) and runs each one with flwr's own task functions
(``pull_task_input``, ``push_message``, ``push_task_output`` of ``flwr.supernode.runtime.run_clientapp``,
the code ``flwr-clientapp`` runs), calling a ClientApp that is already warm.

This uses flwr's Runtime API client (``flwr.supercore.runtime``), which is not deprecated but is internal:
the ``flower`` extra pins flwr to the minor version it was written against.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from flwr.app import Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

__all__ = ["InProcessExecutor"]


class InProcessExecutor(threading.Thread):
    """Polls a SuperNode's Runtime API every ``poll`` seconds and runs its ClientApp tasks in this process."""

    def __init__(self, runtime_address: str, app: ClientApp, poll: float = 0.02, log: Callable = print):
        super().__init__(name="fedloom-executor", daemon=True)
        self.address, self.app, self.poll, self.log = runtime_address, app, poll, log
        self.stop_event = threading.Event()
        self.tasks = 0

    def _client(self, *interceptors, retry: bool = True) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,  # loopback only: the Runtime API of our own SuperNode child
            root_certificates=None,
            interceptors=list(interceptors),
            retry_invoker=make_simple_http_retry_invoker() if retry else None,
        )

    def run(self) -> None:
        # no retries while polling: a SuperNode that is (re)starting is simply asked again later
        client = self._client(RuntimeVersionHttpInterceptor(component_name="SuperExec"), retry=False)
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        try:
            while not self.stop_event.is_set():
                try:
                    res = client.AcquireTask(request)
                except httpx.HTTPError:  # the SuperNode is (re)starting: its Runtime API is not up
                    self.stop_event.wait(0.25)
                    continue
                if res.HasField("task") and res.token:
                    self._run_task(res.token)
                else:
                    self.stop_event.wait(self.poll)
        finally:
            client.close()

    def stop(self) -> None:
        self.stop_event.set()

    def _run_task(self, token: str) -> None:
        """One task, as ``flwr-clientapp`` runs it, with the app already loaded."""
        client = self._client(
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            heartbeat.start()
            message, context, _run, _fab = pull_task_input(client)
            reply = self.app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001 - any failure becomes an error reply, as in flwr-clientapp
            details = f"{type(ex).__name__}: {ex}"
            self.log(f"task failed: {details}")
            if message is not None:
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client, context, status, details)
            except Exception as ex:  # noqa: BLE001 - the SuperNode went away; the server will time out
                self.log(f"could not hand the answer to the SuperNode: {ex}")
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
            self.tasks += 1
