"""Configuration of `aerie edge run`: a TOML file, then environment variables, then defaults.

Every setting has an environment variable named after its place in the file: ``AERIE_EDGE_`` plus
the section path and key in upper case, joined by ``_`` (``[kafka] bootstrap_servers`` →
``AERIE_EDGE_KAFKA_BOOTSTRAP_SERVERS``, ``[input.grpc] address`` → ``AERIE_EDGE_INPUT_GRPC_ADDRESS``).
An environment variable wins over the file. Lists are comma-separated; tables (``librdkafka``) are
``key=value`` pairs, comma-separated. `describe` lists every variable (``aerie edge run --help-config``).

A setting that does not exist, a value of the wrong type or out of range is refused at start-up with
its file key or variable named (`ConfigError`), never ignored.
"""

from __future__ import annotations

import math
import os
import socket
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from aerie.edge.inputs.grpc import GrpcInputConfig
from aerie.edge.kafka import KafkaConfig
from aerie.edge.tls import ClientTls, ServerTls

__all__ = ["ENV_PREFIX", "ConfigError", "EdgeConfig", "describe", "load_config"]

ENV_PREFIX: Final = "AERIE_EDGE_"
_LOCAL_KAFKA: Final = "127.0.0.1:9092"


class ConfigError(Exception):
    """A configuration that cannot run; the message names the key or variable."""


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Falco ``http_output`` (Falco >= 0.44) and Falcosidekick webhooks."""

    host: str = "127.0.0.1"
    port: int = 2801
    path: str | None = None
    tls: ServerTls | None = None
    allowed_identities: list[str] | None = None
    max_body: int = 1 << 20


class JsonLinesSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str = "-"
    follow: bool = False


class InputSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["grpc", "http", "jsonlines"] = "grpc"
    grpc: GrpcInputConfig = msgspec.field(default_factory=GrpcInputConfig)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    jsonlines: JsonLinesSettings = msgspec.field(default_factory=JsonLinesSettings)
    queue_size: int = 8_192
    """Decoded events waiting to be scored (~0.14 s at 60k events/s, ~5.5 KB each). When full: shed
    (counted) or block the input."""
    overload: Literal["shed", "block", "auto"] = "auto"
    """``auto``: shed for live inputs (gRPC, HTTP: Falco does not wait), block for JSON lines (a file can)."""


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dir: str = "/var/lib/aerie/models"
    """A bundle, or a directory of bundles (the newest valid one serves); watched for new ones."""
    poll_s: float = 10.0
    state_file: str | None = None
    """Where the feature state is saved at shutdown and restored from at start (warm restarts)."""


class ThresholdSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    source: str | None = None
    """The policy document published by the brain: a file path or an http(s) URL."""
    override: float | None = None
    """A local override that wins over policy and bundle."""
    refresh_s: float = 30.0
    tls: ClientTls | None = None


class SpoolSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dir: str = "/var/lib/aerie/spool"
    max_bytes: int = 256 * 1024 * 1024
    segment_bytes: int = 16 * 1024 * 1024


class PipelineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_batch: int = 64
    """Most events scored together. A batch is whatever is waiting, never waited for: it adds no
    latency when idle, and under load bounds the added latency to one batch's processing time."""
    anomaly_queue: int = 4_096
    """Anomalies waiting to be written to the spool; when full, scoring waits (anomalies are never shed)."""
    drain_timeout_s: float = 10.0
    """On SIGTERM: how long to wait for Kafka to confirm what is in flight (the rest stays spooled)."""


class OpsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "0.0.0.0"
    port: int = 9101


class EdgeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    node: str = ""
    """This node's name (the Kafka key and the envelope's node). Default: $NODE_NAME, else the hostname."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    input: InputSettings = msgspec.field(default_factory=InputSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    threshold: ThresholdSettings = msgspec.field(default_factory=ThresholdSettings)
    kafka: KafkaConfig = msgspec.field(
        default_factory=lambda: KafkaConfig(bootstrap_servers="127.0.0.1:9092")
    )
    spool: SpoolSettings = msgspec.field(default_factory=SpoolSettings)
    pipeline: PipelineSettings = msgspec.field(default_factory=PipelineSettings)
    ops: OpsSettings = msgspec.field(default_factory=OpsSettings)

    @property
    def node_name(self) -> str:
        return self.node or os.environ.get("NODE_NAME", "") or socket.gethostname()

    @property
    def sheds(self) -> bool:
        """Whether a full event queue sheds (live inputs) or makes the input wait (files)."""
        if self.input.overload == "auto":
            return self.input.kind != "jsonlines"
        return self.input.overload == "shed"


# --- loading ---------------------------------------------------------------------------------------


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct type behind ``tp`` (``X`` or ``X | None``), if any."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                return arg
    return None


def _leaves(
    struct: type[msgspec.Struct], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every settable key: (path, type)."""
    hints = typing.get_type_hints(struct)
    for name in struct.__struct_fields__:
        inner = _struct_of(hints[name])
        if inner is not None:
            yield from _leaves(inner, (*path, name))
        else:
            yield (*path, name), hints[name]


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "_".join(path).upper()


def _from_env(raw: str, tp: Any) -> Any:
    """A variable's text as the type the setting wants (msgspec converts numbers and booleans)."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        if raw == "":
            return None
        return _from_env(raw, args[0])
    if tp is list or origin is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if tp is dict or origin is dict:
        pairs = [part.split("=", 1) for part in raw.split(",") if part.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("expected key=value pairs, comma-separated")
        return {k.strip(): v.strip() for k, v in pairs}
    return raw


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        child = tree.get(key)
        if not isinstance(child, dict):
            child = tree[key] = {}
        tree = child
    tree[path[-1]] = value


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """The file at ``path`` (optional), overlaid with ``AERIE_EDGE_*`` variables; `ConfigError` if invalid."""
    env = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = dict(_leaves(EdgeConfig))
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in {ENV_PREFIX + "CONFIG"}:
            continue
        matches = [p for p in known if _env_name(p) == name]
        if not matches:
            raise ConfigError(f"unknown setting {name} (see `aerie edge run --help-config`)")
        try:
            _set(tree, matches[0], _from_env(env[name], known[matches[0]]))
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    try:
        config = msgspec.convert(tree, EdgeConfig, strict=False)
    except msgspec.ValidationError as exc:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid setting{where}: {_with_env_hint(str(exc))}") from None
    except Exception as exc:  # a nested __post_init__ (TLS files, Kafka settings) refused a value
        raise ConfigError(f"invalid setting: {exc}") from None
    _check(config)
    return config


def _with_env_hint(message: str) -> str:
    """msgspec says ``at `$.kafka.linger_ms```: add the variable that sets it."""
    marker = "at `$."
    if marker not in message:
        return message
    key = message.split(marker, 1)[1].split("`", 1)[0]
    path = tuple(part for part in key.replace("]", "").split(".") if part and "[" not in part)
    return f"{message} (env {_env_name(path)})"


def _check(config: EdgeConfig) -> None:
    problems = []
    if config.input.queue_size < 1:
        problems.append("input.queue_size must be >= 1")
    if not 1 <= config.pipeline.max_batch <= 4096:
        problems.append("pipeline.max_batch must be within 1..4096")
    if config.pipeline.anomaly_queue < 1:
        problems.append("pipeline.anomaly_queue must be >= 1")
    if config.pipeline.drain_timeout_s < 0:
        problems.append("pipeline.drain_timeout_s must be >= 0")
    if config.model.poll_s <= 0 or config.threshold.refresh_s <= 0:
        problems.append("model.poll_s and threshold.refresh_s must be > 0")
    override = config.threshold.override
    if override is not None and not (math.isfinite(override) and 0.0 <= override <= 1.0):
        problems.append("threshold.override must be a number within 0..1 (scores are 0..1)")
    if not 0 <= config.ops.port <= 65535 or not 0 <= config.input.http.port <= 65535:
        problems.append("ports must be within 0..65535")
    if problems:
        raise ConfigError("; ".join(problems))


def describe() -> str:
    """Every setting: its file key, environment variable and default, one per line."""
    defaults = msgspec.to_builtins(EdgeConfig())
    lines = []
    for path, _tp in _leaves(EdgeConfig):
        value: Any = defaults
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        section, key = ".".join(path[:-1]) or "(top)", path[-1]
        shown = "" if value is None else f" = {value!r}"
        lines.append(f"[{section}] {key}{shown}    env {_env_name(path)}")
    return "\n".join(lines)
