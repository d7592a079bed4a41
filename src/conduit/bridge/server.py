"""The bridge's wire: newline-delimited JSON-RPC 2.0 over a loopback TCP listener.

Every request carries ``auth.bearerToken``. This module frames messages, authenticates
them against the :class:`SessionRegistry` and turns failures into JSON-RPC errors; what a
method does is the :class:`BridgeHandler`'s business. Requests on one connection are
served concurrently (a program's ``Promise.all`` of tool calls runs in parallel) and
answered as they complete, matched by ``id``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.stapled import MultiListener
from pydantic import JsonValue

from conduit.core.sessions import Session, SessionRegistry
from conduit.errors import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, ConduitError, InvalidParamsError
from conduit.sandbox.base import BridgeAddress
from conduit.security.redact import sandbox_safe

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024


class BridgeHandler(Protocol):
    async def handle_bridge(self, session: Session, method: str, params: Mapping[str, JsonValue]) -> JsonValue:
        """Serve one authenticated request; raise :class:`ConduitError` for a JSON-RPC error."""
        ...


def error_response(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class BridgeServer:
    """Listens on 127.0.0.1 (a free port) for sandbox and master-token clients.

    Binding and serving are two steps: :meth:`bind` gives the address the runtimes need before the
    handler (the gateway, which needs the runtimes) exists; :meth:`serve` starts answering. A sandbox
    that connects in between waits in the listen backlog.
    """

    def __init__(self, sessions: SessionRegistry, host: str = "127.0.0.1") -> None:
        self._sessions = sessions
        self._handler: BridgeHandler | None = None
        self._host = host
        self._listener: MultiListener[SocketStream] | None = None
        self.address: BridgeAddress | None = None
        self._scope = anyio.CancelScope()

    async def bind(self) -> BridgeAddress:
        """Listen on a free port; returns the address sandboxes connect to."""
        self._listener = await anyio.create_tcp_listener(local_host=self._host, local_port=0)
        sockname = self._listener.listeners[0].extra(SocketAttribute.local_address)
        assert isinstance(sockname, tuple)
        self.address = BridgeAddress(str(sockname[0]), int(sockname[1]))
        logger.info(
            "sandbox bridge on %s:%d (the master token may call mcp_register_upstream and mcp_execute_* there)",
            self.address.host,
            self.address.port,
        )
        return self.address

    def serve(self, tg: TaskGroup, handler: BridgeHandler) -> None:
        """Answer requests with ``handler``, in ``tg``, until :meth:`aclose`."""
        assert self._listener is not None, "bind() first"
        self._handler = handler
        tg.start_soon(self._serve, self._listener)

    async def _serve(self, listener: MultiListener[SocketStream]) -> None:
        with self._scope:
            async with listener:
                await listener.serve(self._serve_connection)

    async def aclose(self) -> None:
        """Stop accepting and drop open connections."""
        self._scope.cancel()
        if self._handler is None and self._listener is not None:
            await self._listener.aclose()  # bound but never served

    async def _serve_connection(self, stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        write_lock = anyio.Lock()

        async def send(message: Mapping[str, Any]) -> None:
            data = json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"
            async with write_lock:
                await stream.send(data)

        async with stream, anyio.create_task_group() as tg:
            while True:
                try:
                    line = await reader.receive_until(b"\n", MAX_MESSAGE_BYTES)
                except anyio.DelimiterNotFound:
                    await send(error_response(None, INVALID_REQUEST, f"message larger than {MAX_MESSAGE_BYTES} bytes"))
                    break
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                    break
                if line.strip():
                    tg.start_soon(self._answer, line, send)
            tg.cancel_scope.cancel()

    async def _answer(self, line: bytes, send: Any) -> None:
        response = await self.respond(line)
        if response is not None:
            try:
                await send(response)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                logger.debug("bridge client went away before its answer")

    async def answer(self, token: object, method: str, params: object) -> dict[str, Any]:
        """One request's answer as the wire sends it, ``{"result": ...}`` or ``{"error": {code, message}}``:
        the bridge's one entry (:data:`~conduit.sandbox.base.BridgeCall`), behind the socket and in-process
        alike (Monty), authenticated against the session registry the same either way.
        """
        try:
            session = self._sessions.authenticate(token, method)
            if not isinstance(params, dict):
                raise InvalidParamsError("params must be an object")
            assert self._handler is not None
            result = await self._handler.handle_bridge(session, method, params)
        except ConduitError as exc:
            error: dict[str, Any] = {"code": exc.code, "message": sandbox_safe(exc.message)}
            if exc.data is not None:
                error["data"] = exc.data
            return {"error": error}
        except Exception:
            logger.exception("bridge method %s failed", method)
            return {"error": {"code": INTERNAL_ERROR, "message": "internal error"}}
        return {"result": result}

    async def respond(self, line: bytes) -> dict[str, Any] | None:
        """The JSON-RPC response for one raw request line (None for a notification)."""
        try:
            message = json.loads(line)
        except ValueError:
            return error_response(None, PARSE_ERROR, "invalid JSON")
        if (
            not isinstance(message, dict)
            or message.get("jsonrpc") != "2.0"
            or not isinstance(message.get("method"), str)
        ):
            return error_response(_id_of(message), INVALID_REQUEST, "expected a JSON-RPC 2.0 request object")
        params = message.get("params", {})
        auth = message.get("auth")
        token = auth.get("bearerToken") if isinstance(auth, dict) else None
        answer = await self.answer(token, message["method"], {} if params is None else params)
        if "id" not in message:
            return None
        return {"jsonrpc": "2.0", "id": message.get("id"), **answer}


def _id_of(message: Any) -> Any:
    return message.get("id") if isinstance(message, dict) else None
