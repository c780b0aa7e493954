"""`A2AAgentCaller`: how the coordinator calls the agents, over A2A 1.0 JSON-RPC and mutual TLS.

It implements `aerie.proto.agents.AgentCaller` with a2a-sdk's client on one shared
`httpx.AsyncClient` (connection pooling, the caller's own certificate, TLS 1.2+).

Each `call` is one ``SendMessage`` whose message holds the request as one data part, with a
``traceparent`` header that is a new child span of the caller's. What can happen:

=============================================  =========================================================
the agent answered with a task                 `AgentReply` with ``state`` from the task's final state
                                               (``completed``, ``input_required``, ``rejected``,
                                               ``failed``); ``data`` is the reply Struct as plain data,
                                               checked against the agent's reply type (a reply that
                                               does not match becomes ``failed``)
the agent answered a JSON-RPC error            `AgentReply` with ``state="failed"`` and ``error``; not
                                               retried (the same request gets the same answer)
connection refused/reset, timeout, HTTP 5xx    retried up to ``attempts`` times with capped exponential
                                               backoff and jitter; then `AgentUnavailable`
HTTP 403 (identity not allowed), other 4xx,    `AgentUnavailable` at once: a configuration error that
an agent certificate we do not trust, a TLS    retrying cannot fix
alert
=============================================  =========================================================

An agent that refuses *our* certificate drops the connection during the handshake without an alert
reaching us (asyncio's TLS server), which looks exactly like an agent dying: it is retried, then
`AgentUnavailable`.

Retrying a ``SendMessage`` that may have reached the agent is safe: detect, analyst and reviewer are
pure, remediate and notify are idempotent by the request's key.

``timeout_s`` bounds each attempt (connect, send, wait for the answer), not the whole call; the
worst case is ``attempts * timeout_s`` plus the backoff pauses.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
from a2a.client import (
    A2AClientError,
    A2AClientTimeoutError,
    Client,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
)
from a2a.helpers import new_data_part
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    Message,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError
from google.protobuf.json_format import MessageToDict

from aerie.brain.agents.registry import SPECS, default_endpoints
from aerie.brain.metrics import BrainMetrics
from aerie.edge.errors import TlsError
from aerie.edge.tls import ClientTls, client_ssl_context
from aerie.proto.agents import AgentReply, AgentUnavailable
from aerie.proto.agents import TaskState as ReplyState
from aerie.proto.envelope import EnvelopeError, TraceContext
from aerie.proto.logs import trace_scope
from aerie.proto.retry import backoff_delay, tls_refusal

__all__ = ["A2AAgentCaller"]

log = logging.getLogger("aerie.brain.agents.client")

_STATES: Final[dict[int, ReplyState]] = {
    TaskState.TASK_STATE_COMPLETED: "completed",
    TaskState.TASK_STATE_INPUT_REQUIRED: "input_required",
    TaskState.TASK_STATE_REJECTED: "rejected",
    TaskState.TASK_STATE_FAILED: "failed",
}


class _Transient(Exception):
    """Worth another attempt: the agent may be restarting or overloaded."""


class _Permanent(Exception):
    """Retrying cannot help: the agent refused us or is misconfigured."""


class A2AAgentCaller:
    """Calls agents over A2A with mutual TLS; implements `aerie.proto.agents.AgentCaller`.

    Args:
        endpoints: agent name → base URL (``https://host:port``); see
            `aerie.brain.agents.registry.default_endpoints` and ``parse_endpoints``.
        tls: the caller's certificate and key and the CA that agents' certificates chain to (all
            three required; `TlsError` otherwise).
        metrics: where to record ``aerie_agent_requests``, ``aerie_agent_request_seconds``,
            ``aerie_agent_retries``, ``aerie_a2a_in_flight`` (a private one if None).
        timeout_s: default limit of each attempt.
        attempts: tries per call, the first included (at least 1).
        backoff_s, backoff_cap_s: pause before retry *n* is drawn from
            ``[d/2, d]`` with ``d = min(backoff_cap_s, backoff_s * 2**(n-1))``.
        max_connections: pooled connections, all agents together.

    Use as ``async with`` or call `aclose`.
    """

    def __init__(
        self,
        endpoints: Mapping[str, str],
        *,
        tls: ClientTls,
        metrics: BrainMetrics | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.1,
        backoff_cap_s: float = 2.0,
        max_connections: int = 32,
        rng: random.Random | None = None,
    ) -> None:
        missing = tls.missing_for_mutual_tls()
        if missing:
            raise TlsError(f"agent calls need mutual TLS; missing: {', '.join(missing)}")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        unknown = sorted(set(endpoints) - set(SPECS))
        if unknown:
            raise ValueError(f"unknown agents in endpoints: {', '.join(unknown)}")
        self.endpoints = {name: url.rstrip("/") for name, url in endpoints.items()}
        self.metrics = metrics if metrics is not None else BrainMetrics()
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self._rng = rng if rng is not None else random.Random()
        self._http = httpx.AsyncClient(
            verify=client_ssl_context(tls),
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._factory = ClientFactory(ClientConfig(httpx_client=self._http, streaming=False))
        self._clients: dict[str, Client] = {}

    @classmethod
    def from_certs(
        cls,
        certs: Path,
        *,
        component: str = "brain",
        endpoints: Mapping[str, str] | None = None,
        **options: Any,
    ) -> A2AAgentCaller:
        """A caller using ``certs/<component>.crt`` (``aerie certs init`` layout) against
        ``endpoints`` (default: every agent on its default local port). Raises `TlsError`."""
        tls = ClientTls(
            ca=str(certs / "ca.crt"),
            cert=str(certs / f"{component}.crt"),
            key=str(certs / f"{component}.key"),
        )
        return cls(endpoints if endpoints is not None else default_endpoints(), tls=tls, **options)

    def _client(self, agent: str, url: str) -> Client:
        client = self._clients.get(agent)
        if client is None:
            # The card is known, not fetched: one round trip less per agent, and the URL stays the
            # one configured here rather than whatever the agent advertises.
            card = AgentCard(
                name=f"aerie-{agent}",
                supported_interfaces=[
                    AgentInterface(url=url + "/", protocol_binding="JSONRPC", protocol_version="1.0")
                ],
                capabilities=AgentCapabilities(streaming=False),
            )
            client = self._clients[agent] = self._factory.create(card)
        return client

    async def call(
        self, agent: str, request: msgspec.Struct, *, traceparent: str, timeout_s: float | None = None
    ) -> AgentReply:
        """Send ``request`` to ``agent``; see the module docstring for outcomes.

        Raises `AgentUnavailable` (after the retries, or at once for a refusal or an agent with no
        configured endpoint) and `TypeError` when ``request`` is not the agent's request type.
        """
        spec = SPECS.get(agent)
        if spec is not None and type(request) is not spec.request_type:
            raise TypeError(f"agent {agent} takes {spec.request_type.__name__}, not {type(request).__name__}")
        try:
            parent = TraceContext.parse(traceparent)
        except EnvelopeError:
            parent = TraceContext.new()
            log.warning("invalid traceparent from caller: starting a new trace", extra={"agent": agent})
        with trace_scope(parent.trace_id):
            url = self.endpoints.get(agent)
            if url is None:
                self.metrics.agent_requests.labels(agent, "unavailable").inc()
                raise AgentUnavailable(agent, 0, "no endpoint configured")
            gauge = self.metrics.a2a_in_flight.labels(agent)
            gauge.inc()
            started = time.perf_counter()
            try:
                reply = await self._call(
                    agent, url, request, parent=parent, timeout_s=timeout_s or self.timeout_s, started=started
                )
            except AgentUnavailable:
                self.metrics.agent_requests.labels(agent, "unavailable").inc()
                raise
            finally:
                gauge.dec()
                self.metrics.agent_latency.labels(agent).observe(time.perf_counter() - started)
            self.metrics.agent_requests.labels(agent, reply.state).inc()
            return reply

    async def _call(
        self,
        agent: str,
        url: str,
        request: msgspec.Struct,
        *,
        parent: TraceContext,
        timeout_s: float,
        started: float,
    ) -> AgentReply:
        client = self._client(agent, url)
        payload = msgspec.to_builtins(request)
        reason = ""
        for attempt in range(1, self.attempts + 1):
            message = Message(
                role=Role.ROLE_USER,
                message_id=uuid.uuid4().hex,
                parts=[new_data_part(payload, media_type="application/json")],
            )
            # Every attempt is its own HTTP request, so its own span.
            context = ClientCallContext(
                timeout=timeout_s, service_parameters={"traceparent": parent.child().traceparent}
            )
            try:
                result = await self._send(client, SendMessageRequest(message=message), context)
            except _Permanent as exc:
                log.warning("agent refused the call", extra={"agent": agent, "reason": str(exc)})
                raise AgentUnavailable(agent, attempt, str(exc)) from None
            except _Transient as exc:
                reason = str(exc)
                if attempt == self.attempts:
                    break
                self.metrics.agent_retries.labels(agent).inc()
                delay = self._backoff(attempt)
                log.warning(
                    "agent call failed, retrying",
                    extra={
                        "agent": agent,
                        "attempt": attempt,
                        "reason": reason,
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
                continue
            duration_ms = (time.perf_counter() - started) * 1000.0
            if isinstance(result, str):
                return AgentReply(
                    agent=agent,
                    state="failed",
                    data={},
                    task_id="",
                    duration_ms=duration_ms,
                    attempts=attempt,
                    error=result,
                )
            return self._reply(agent, result, duration_ms, attempt)
        log.warning("agent unavailable", extra={"agent": agent, "attempts": self.attempts, "reason": reason})
        raise AgentUnavailable(agent, self.attempts, reason)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_s, self.backoff_cap_s, self._rng)

    async def _send(
        self, client: Client, request: SendMessageRequest, context: ClientCallContext
    ) -> Task | str:
        """The task the agent answered, or a JSON-RPC error as text; `_Transient`/`_Permanent` else."""
        try:
            async for event in client.send_message(request, context=context):
                if event.HasField("task"):
                    return event.task
                return "the agent answered with a message, not a task"
            raise _Transient("the agent answered nothing")
        except A2AClientTimeoutError:
            raise _Transient(f"timed out after {context.timeout}s") from None
        except A2AClientError as exc:
            cause = exc.__cause__
            if isinstance(cause, httpx.HTTPStatusError):
                status = cause.response.status_code
                text = f"HTTP {status}: {cause.response.text[:200]}"
                if status >= 500:
                    raise _Transient(text) from None
                raise _Permanent(text) from None
            if isinstance(cause, httpx.TransportError):
                refusal = tls_refusal(cause, "agent")
                if refusal is not None:
                    raise _Permanent(refusal) from None
                raise _Transient(f"{type(cause).__name__}: {cause}") from None
            raise _Permanent(f"invalid answer: {exc}") from None
        except A2AError as exc:
            return f"JSON-RPC error {type(exc).__name__}: {exc}"
        except OSError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None

    def _reply(self, agent: str, task: Task, duration_ms: float, attempts: int) -> AgentReply:
        state = _STATES.get(task.status.state)
        status_text = " ".join(p.text for p in task.status.message.parts if p.HasField("text"))
        if state is None:
            return AgentReply(
                agent=agent,
                state="failed",
                data={},
                task_id=task.id,
                duration_ms=duration_ms,
                attempts=attempts,
                error=f"unexpected task state {TaskState.Name(task.status.state)}",
            )
        if state == "failed":
            return AgentReply(
                agent=agent,
                state="failed",
                data={},
                task_id=task.id,
                duration_ms=duration_ms,
                attempts=attempts,
                error=status_text or "the agent failed the task without a reason",
            )
        data: Any = None
        for artifact in task.artifacts:
            for part in artifact.parts:
                if part.HasField("data"):
                    data = MessageToDict(part.data)
                    break
            if data is not None:
                break
        spec = SPECS.get(agent)
        error: str | None = None
        if spec is not None:
            try:
                # Normalised through the reply type, so the caller gets exactly its shape. No reply
                # field is an int (a data part carries every number as a double).
                data = msgspec.to_builtins(msgspec.convert(data, spec.reply_type))
            except msgspec.ValidationError as exc:
                error = f"reply is not a {spec.reply_type.__name__}: {exc}"
        elif not isinstance(data, dict):
            error = "reply holds no data part"
        if error is not None:
            return AgentReply(
                agent=agent,
                state="failed",
                data={},
                task_id=task.id,
                duration_ms=duration_ms,
                attempts=attempts,
                error=error,
            )
        return AgentReply(
            agent=agent,
            state=state,
            data=data,
            task_id=task.id,
            duration_ms=duration_ms,
            attempts=attempts,
        )

    async def aclose(self) -> None:
        """Close the pooled connections. Safe to call twice."""
        await self._http.aclose()

    async def __aenter__(self) -> A2AAgentCaller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
