"""One agent as an A2A 1.0 service over HTTPS with mutual TLS, authorised by the caller's identity.

Layers, outermost first:

1. **TLS** (`aerie.proto.serving`, uvicorn): the client must present a certificate that chains to
   the aerie CA, or the handshake fails; nothing above it runs.
2. **Gate** (`_Gate`, a raw ASGI middleware): answers ``/healthz``; lets any CA-verified peer read
   the agent card (it is public by the A2A spec and holds no secret, and discovery by another
   aerie component should not need an allow-list entry); refuses every other request with **403**
   unless the peer's SPIFFE identity is on the allow-list (default: ``spiffe://aerie/brain`` and
   ``spiffe://aerie/cli``), counted in ``aerie_agent_refused{reason="identity"}``, before the SDK
   reads the body. Requests it lets through run inside `trace_scope` of their ``traceparent``.
3. **a2a-sdk** (Starlette routes): the card at ``/.well-known/agent-card.json`` and JSON-RPC at
   ``/`` (``SendMessage``, ``GetTask``, ...; header ``A2A-Version: 1.0``), tasks scoped per caller
   identity and kept in memory (at most ``max_tasks``, oldest dropped).
4. **Executor** (`_Executor`): decodes the one data part into the agent's request Struct, runs the
   `AgentLogic`, answers with a task whose artifact holds the reply and whose state says what
   happened (see `aerie.proto.agents`). A request that fails validation becomes a
   ``TASK_STATE_FAILED`` task with the reason in its status message (and
   ``aerie_agent_refused{reason="malformed"}``); the agent never crashes on input. The task's
   metadata echoes the ``traceparent`` it was served under, the caller and the agent.

Metrics are recorded into the `BrainMetrics` passed in (`AgentService.metrics`); ``/metrics`` is
not served on the agent port, which admits only mTLS callers, but by the process's ops endpoint.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

import msgspec
from a2a.auth.user import User
from a2a.helpers import new_data_part, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    DefaultServerCallContextBuilder,
    create_agent_card_routes,
    create_jsonrpc_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    ListTasksRequest,
    ListTasksResponse,
    MutualTlsSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    Task,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request

from aerie.brain.agents.logic import AgentLogic, LogicError, Outcome
from aerie.brain.agents.registry import DEFAULT_ALLOWED, DEFAULT_HOST
from aerie.brain.mcp.trace import serving_traceparent
from aerie.brain.metrics import BrainMetrics
from aerie.edge.tls import ServerTls, server_ssl_context
from aerie.proto.envelope import EnvelopeError, TraceContext
from aerie.proto.logs import trace_scope
from aerie.proto.serving import Running, ServeError, bind, peer_identity, refuse_identity, respond, serve

__all__ = ["CARD_PATH", "HEALTH_PATH", "RPC_PATH", "AgentService", "ServiceError"]

log = logging.getLogger("aerie.brain.agents.service")

CARD_PATH: Final = AGENT_CARD_WELL_KNOWN_PATH
RPC_PATH: Final = "/"
HEALTH_PATH: Final = "/healthz"
_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

_STATES: Final = {
    "completed": TaskState.TASK_STATE_COMPLETED,
    "input_required": TaskState.TASK_STATE_INPUT_REQUIRED,
    "rejected": TaskState.TASK_STATE_REJECTED,
}


class ServiceError(Exception):
    """The agent cannot start: address in use, unreadable TLS material, unusable state directory."""


def _version() -> str:
    try:
        return importlib.metadata.version("aerie")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - always installed here
        return "0"


def _trace(headers: Any) -> tuple[TraceContext | None, str | None]:
    """The request's trace context and its raw header; a malformed header counts as none."""
    raw = headers.get("traceparent") if isinstance(headers, dict) else None
    if not isinstance(raw, str) or not raw:
        return None, None
    try:
        return TraceContext.parse(raw), raw
    except EnvelopeError:
        return None, None


# --- identity ----------------------------------------------------------------------------------


class _Peer(User):
    """The caller as the SDK sees it: its SPIFFE identity, which also scopes its tasks."""

    def __init__(self, identity: str | None) -> None:
        self.identity = identity

    @property
    def is_authenticated(self) -> bool:
        return self.identity is not None

    @property
    def user_name(self) -> str:
        return self.identity or ""


class _PeerContextBuilder(DefaultServerCallContextBuilder):
    def build_user(self, request: Request) -> User:
        return _Peer(peer_identity(request.scope))


class _BoundedTaskStore(TaskStore):
    """The SDK's in-memory store, forgetting the oldest tasks past ``limit`` (an agent runs for
    months; callers read a task right after sending, never weeks later)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inner = InMemoryTaskStore()
        self._order: OrderedDict[tuple[str, str], ServerCallContext] = OrderedDict()

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await self._inner.save(task, context)
        key = (context.user.user_name, task.id)
        if key not in self._order:
            self._order[key] = context
            while len(self._order) > self.limit:
                (_, old_id), old_context = self._order.popitem(last=False)
                await self._inner.delete(old_id, old_context)

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        return await self._inner.get(task_id, context)

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        return await self._inner.list(params, context)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        self._order.pop((context.user.user_name, task_id), None)
        await self._inner.delete(task_id, context)


# --- executor ----------------------------------------------------------------------------------


class _Executor(AgentExecutor):
    def __init__(self, logic: AgentLogic, metrics: BrainMetrics) -> None:
        self.logic = logic
        self.name = logic.spec.name
        self.metrics = metrics

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        trace, traceparent = _trace(context.call_context.state.get("headers"))
        # serving_traceparent: MCP calls the logic makes are child spans of this request's span.
        with trace_scope(trace.trace_id if trace is not None else None), serving_traceparent(traceparent):
            await self._execute(context, event_queue, traceparent)

    async def _execute(
        self, context: RequestContext, event_queue: EventQueue, traceparent: str | None
    ) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        updater = TaskUpdater(event_queue, task_id, context_id)
        caller = context.call_context.user.user_name
        if context.current_task is not None:
            # One message, one task: a human decision goes through the coordinator, not here.
            await self._finish(
                updater, TaskState.TASK_STATE_FAILED, "failed", "follow-up messages are not accepted"
            )
            return
        metadata: dict[str, Any] = {"agent": self.name, "caller": caller}
        if traceparent is not None:
            metadata["traceparent"] = traceparent
        await event_queue.enqueue_event(
            Task(
                id=task_id,
                context_id=context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                metadata=metadata,
            )
        )
        try:
            outcome = await self.logic.handle(self._decode(context))
        except LogicError as exc:
            # Bad data from an allowed caller: a failed task with the reason, never a crash.
            self.metrics.agent_refused.labels(self.name, "malformed").inc()
            log.warning(
                "request refused: malformed",
                extra={"agent": self.name, "task_id": task_id, "reason": str(exc)},
            )
            await self._finish(updater, TaskState.TASK_STATE_FAILED, "failed", f"bad request: {exc}")
            return
        except Exception as exc:
            log.exception("agent logic failed", extra={"agent": self.name, "task_id": task_id})
            await self._finish(
                updater, TaskState.TASK_STATE_FAILED, "failed", f"internal error: {type(exc).__name__}"
            )
            return
        await self._reply(updater, task_id, outcome)

    def _decode(self, context: RequestContext) -> msgspec.Struct:
        message = context.message
        parts = [p for p in message.parts if p.HasField("data")] if message is not None else []
        if len(parts) != 1:
            raise LogicError(f"expected one data part holding a {self.logic.spec.request_type.__name__}")
        data = MessageToDict(parts[0].data)
        try:
            # Strict: no lax parsing of "false" into a dry_run flag. No request field is an int, which
            # matters because a data part is a protobuf Value and carries every number as a double.
            return msgspec.convert(data, self.logic.spec.request_type)
        except msgspec.ValidationError as exc:
            raise LogicError(f"{self.logic.spec.request_type.__name__}: {exc}") from None

    async def _reply(self, updater: TaskUpdater, task_id: str, outcome: Outcome) -> None:
        data = msgspec.to_builtins(outcome.reply)
        await updater.add_artifact(
            [new_data_part(data, media_type="application/json")],
            name=f"{self.name}-{type(outcome.reply).__name__.lower()}",
        )
        log.info(
            "request served",
            extra={"agent": self.name, "task_id": task_id, "state": outcome.state, "note": outcome.note},
        )
        await self._finish(updater, _STATES[outcome.state], outcome.state, outcome.note)

    async def _finish(self, updater: TaskUpdater, state: TaskState, label: str, text: str) -> None:
        self.metrics.agent_served.labels(self.name, label).inc()
        message = updater.new_agent_message([new_text_part(text)]) if text else None
        await updater.update_status(state, message=message)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        # Every task finishes inside one SendMessage: there is never anything left to cancel.
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


# --- the gate ----------------------------------------------------------------------------------


class _Gate:
    """Health, identity allow-list, trace scope; see the module docstring."""

    def __init__(self, app: Asgi, *, agent: str, allowed: frozenset[str], metrics: BrainMetrics) -> None:
        self.app = app
        self.agent = agent
        self.allowed = allowed
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            await respond(send, 200, b"ok\n", headers=[_TEXT])
            return
        identity = peer_identity(scope)
        if not (path == CARD_PATH and method in ("GET", "HEAD")) and identity not in self.allowed:
            self.metrics.agent_refused.labels(self.agent, "identity").inc()
            log.warning(
                "request refused: identity not allowed",
                extra={"agent": self.agent, "peer": identity, "path": path[:200]},
            )
            await refuse_identity(send, identity, f"agent {self.agent}")
            return
        trace, _ = _trace({k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()})
        started = time.perf_counter()
        with trace_scope(trace.trace_id if trace is not None else None):
            try:
                await self.app(scope, receive, send)
            finally:
                if path == RPC_PATH and method == "POST":
                    self.metrics.agent_serve_latency.labels(self.agent).observe(time.perf_counter() - started)


# --- the service -------------------------------------------------------------------------------


def agent_card(logic: AgentLogic, url: str) -> AgentCard:
    """The public card: name, description, one skill, the JSON-RPC interface, mTLS as the scheme."""
    spec = logic.spec
    return AgentCard(
        name=f"aerie-{spec.name}",
        description=spec.description,
        version=_version(),
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False, extended_agent_card=False),
        security_schemes={
            "mtls": SecurityScheme(
                mtls_security_scheme=MutualTlsSecurityScheme(
                    description="client certificate from the aerie CA; callers authorised by SPIFFE ID"
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={"mtls": StringList()})],
        default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=[
            AgentSkill(
                id=spec.name,
                name=spec.skill,
                description=f"{spec.description} Input: one data part holding a "
                f"{spec.request_type.__name__}; output: an artifact holding a {spec.reply_type.__name__}.",
                tags=list(spec.tags),
                input_modes=["application/json"],
                output_modes=["application/json"],
            )
        ],
    )


class AgentService:
    """Serve one `AgentLogic` as an A2A agent; see the module docstring for what is served.

    Args:
        logic: the agent (`aerie.brain.agents.logic.build_logic`).
        tls: the agent's certificate and the CA callers must chain to; ``require_client_cert`` must
            hold (mutual TLS) or `ServiceError` is raised.
        host, port: where to listen (``port=None``: the agent's default, ``0``: any free port).
        allowed: SPIFFE identities that may call (the card is readable by any CA-verified peer).
        metrics: where to record ``aerie_agent_*`` server-side metrics (a private one if None).
        public_url: the URL the card advertises (default: ``https://host:port``), for Kubernetes
            where callers reach the agent by a Service name.
        max_tasks: finished tasks kept for ``GetTask``.
        graceful_timeout_s: how long `stop` lets requests in flight finish (idle keep-alive
            connections are closed at once, see `aerie.proto.serving`).
    """

    def __init__(
        self,
        logic: AgentLogic,
        *,
        tls: ServerTls,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        allowed: Iterable[str] = DEFAULT_ALLOWED,
        metrics: BrainMetrics | None = None,
        public_url: str | None = None,
        max_tasks: int = 10_000,
        graceful_timeout_s: int = 5,
    ) -> None:
        if not tls.mutual:
            raise ServiceError(
                "agents serve mutual TLS only: the TLS settings need a CA and client certificates"
            )
        self.logic = logic
        self.name = logic.spec.name
        self.tls = tls
        self.host = host
        self.port = logic.spec.port if port is None else port
        self.allowed = frozenset(allowed)
        self.metrics = metrics if metrics is not None else BrainMetrics()
        self.public_url = public_url
        self.max_tasks = max_tasks
        self.graceful_timeout_s = graceful_timeout_s
        self._running: Running | None = None
        self._handler: DefaultRequestHandler | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``https://host:port`` once started (the real port when started with ``port=0``)."""
        if self._url is None:
            raise ServiceError(f"agent {self.name} is not started")
        return self._url

    def build_app(self, url: str) -> Asgi:
        """The ASGI app (gate around the SDK's routes) advertising ``url`` on its card."""
        card = agent_card(self.logic, url)
        self._handler = DefaultRequestHandler(
            agent_executor=_Executor(self.logic, self.metrics),
            task_store=_BoundedTaskStore(self.max_tasks),
            agent_card=card,
            # An escalated task waits in input-required forever; its in-memory runner need not.
            interrupted_task_timeout=30.0,
        )
        routes = [
            *create_agent_card_routes(card),
            *create_jsonrpc_routes(self._handler, rpc_url=RPC_PATH, context_builder=_PeerContextBuilder()),
        ]
        return _Gate(Starlette(routes=routes), agent=self.name, allowed=self.allowed, metrics=self.metrics)

    async def start(self) -> str:
        """Open the logic's state, bind, serve; returns the URL. Raises `ServiceError`."""
        if self._running is not None:
            return self.url
        try:
            await self.logic.start()
        except Exception as exc:
            await self.logic.close()
            raise ServiceError(f"agent {self.name}: {exc}") from None
        try:
            sock = bind(self.host, self.port)
        except ServeError as exc:
            await self.logic.close()
            raise ServiceError(f"agent {self.name}: {exc}") from None
        port = int(sock.getsockname()[1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"https://{host}:{port}"
        app = self.build_app(self.public_url or url)
        tls = self.tls
        try:
            self._running = await serve(
                app,
                sock,
                ssl_factory=lambda: server_ssl_context(tls),
                name=f"aerie-agent-{self.name}",
                graceful_timeout_s=self.graceful_timeout_s,
            )
        except ServeError as exc:
            await self.logic.close()
            raise ServiceError(str(exc)) from None
        self.port = port
        self._url = url
        return url

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, close the logic's state. Safe to call twice."""
        running, self._running = self._running, None
        if running is not None:
            await running.stop()
        if self._handler is not None:
            await self._handler.aclose()
            self._handler = None
        await self.logic.close()

    async def __aenter__(self) -> AgentService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
