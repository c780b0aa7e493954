"""aerie's Falco side: the rules file, Falco's settings, and the Kubernetes objects that carry them.

What must not drift, and what checks it here:

* ``policies/falco/aerie_rules.yaml`` says exactly what ``BASELINE_RULES`` in
  ``models/corpus/rules.py`` simulates (name, condition, output, priority, tags, source, order), and
  every condition parses under Falco's condition grammar with macros that exist.
* ``daemonset/falco/falco-config.yaml`` (Falco's config.d files) feeds the edge: JSON alerts, the
  ``append_output`` fields equal to ``EXTRA_FIELDS``, the http_output URL the edge's `HttpInput`
  serves, the gRPC socket the edge's `GrpcInput` dials by default, aerie's rules file at the path
  the rules ConfigMap is mounted on.
* ``daemonset/falco/falco-rules.yaml`` is generated from the rules file: regenerate it with
  ``.venv/bin/python tests/test_falco_config.py --write``.
* Every manifest validates with kubernetes-validate ``--strict``, and so does the kustomize build
  when ``kubectl`` or ``kustomize`` is installed.

Nothing here needs Falco or the network; Falco facts (grammar, config keys, priorities) are written
down below from Falco's sources and documentation.
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from k8s_testkit import kustomize_build, validation_error

from aerie.brain.certs import Pki
from aerie.edge.inputs.grpc import DEFAULT_ADDRESS, parse_address
from aerie.edge.inputs.http import HttpInput
from aerie.edge.tls import ServerTls
from aerie.models.corpus.rules import BASELINE_RULES, EXTRA_FIELDS, Rule
from aerie.proto.event import Priority

ROOT: Final = Path(__file__).resolve().parents[1]
RULES_FILE: Final = ROOT / "policies" / "falco" / "aerie_rules.yaml"
MANIFESTS: Final = ROOT / "daemonset" / "falco"
CONFIG_MANIFEST: Final = MANIFESTS / "falco-config.yaml"
RULES_MANIFEST: Final = MANIFESTS / "falco-rules.yaml"
KUSTOMIZATION: Final = MANIFESTS / "kustomization.yaml"

RULES_CONFIGMAP: Final = "aerie-falco-rules"
COMMON_CONFIG: Final = "aerie.yaml"
HTTP_CONFIG: Final = "aerie-http.yaml"
GRPC_CONFIG: Final = "aerie-grpc.yaml"

# ---------------------------------------------------------------------------------------------
# Falco facts.

# Macros aerie's rules borrow from the stock falco_rules.yaml (loaded first), with the event types
# they restrict a condition to.
STOCK_MACROS: Final = {
    "open_read": frozenset({"open", "openat", "openat2"}),
    "open_write": frozenset({"open", "openat", "openat2"}),
}
# Field classes of the syscall source (container.* and k8s.* come from the container plugin).
FIELD_CLASSES: Final = frozenset({"evt", "proc", "fd", "user", "group", "thread", "container", "k8s"})
# Keys Falco's rules schema allows per item kind (the schema has additionalProperties: false).
RULE_KEYS: Final = frozenset(
    {
        "rule",
        "desc",
        "condition",
        "output",
        "priority",
        "tags",
        "enabled",
        "source",
        "exceptions",
        "warn_evttypes",
        "skip-if-unknown-filter",
        "capture",
        "capture_duration",
        "capture_events",
        "capture_filesize",
        "append",
        "override",
    }
)
ITEM_KEYS: Final = {
    "required_engine_version": frozenset({"required_engine_version"}),
    "required_plugin_versions": frozenset({"required_plugin_versions"}),
    "macro": frozenset({"macro", "condition"}),
    "list": frozenset({"list", "items"}),
    "rule": RULE_KEYS,
}
# Rule priorities as Falco's rules schema spells them; Falco compares case-insensitively and
# reads "info" as Informational.
RULE_PRIORITIES: Final = {
    "EMERGENCY": Priority.EMERGENCY,
    "ALERT": Priority.ALERT,
    "CRITICAL": Priority.CRITICAL,
    "ERROR": Priority.ERROR,
    "WARNING": Priority.WARNING,
    "NOTICE": Priority.NOTICE,
    "INFO": Priority.INFORMATIONAL,
    "INFORMATIONAL": Priority.INFORMATIONAL,
    "DEBUG": Priority.DEBUG,
}
# The falco.yaml keys aerie sets, with the sub-keys Falco's config schema allows: Falco at most
# warns about a key it does not know and runs without the setting, so a typo must fail here.
CONFIG_KEYS: Final[dict[str, frozenset[str] | None]] = {
    "priority": None,
    "rule_matching": None,
    "rules_files": None,
    "json_output": None,
    "json_include_output_property": None,
    "json_include_tags_property": None,
    "append_output": frozenset({"match", "extra_output", "extra_fields", "suggested_output"}),
    "stdout_output": frozenset({"enabled"}),
    "syslog_output": frozenset({"enabled"}),
    "http_output": frozenset(
        {
            "enabled",
            "url",
            "user_agent",
            "insecure",
            "ca_cert",
            "ca_bundle",
            "ca_path",
            "mtls",
            "client_cert",
            "client_key",
            "echo",
            "compress_uploads",
            "keep_alive",
        }
    ),
    "grpc": frozenset({"enabled", "bind_address", "threadiness"}),
    "grpc_output": frozenset({"enabled"}),
}
APPEND_MATCH_KEYS: Final = frozenset({"source", "tags", "rule"})

# ---------------------------------------------------------------------------------------------
# Falco's condition grammar (libsinsp's filter parser), enough to parse a condition, list the
# macros and fields it uses, and find the event types it is restricted to.

_NOT: Final = re.compile(r"not\s+")
_IDENTIFIER: Final = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")
_FIELD: Final = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*(?:\.[a-zA-Z]+[a-zA-Z0-9_]*)+")
_FIELD_ARG: Final = re.compile(r"[^\]\[\"'\s]+")
_BARE: Final = re.compile(r"[^()\"'\s=,]+")
_NUMBER: Final = re.compile(r"0[xX][0-9a-zA-Z]+|[+\-]?[0-9]+\.?[0-9]*(?:[eE][+\-][0-9]+)?")
_UNARY_OPS: Final = ("exists",)
_NUM_OPS: Final = ("<=", "<", ">=", ">")
_STR_OPS: Final = (
    "==",
    "=",
    "!=",
    "glob ",
    "iglob ",
    "contains ",
    "icontains ",
    "bcontains ",
    "startswith ",
    "bstartswith ",
    "endswith ",
)
_LIST_OPS: Final = ("intersects", "in", "pmatch")
_OUTPUT_FIELD: Final = re.compile(r"%([a-zA-Z0-9_]+(?:\.[a-zA-Z0-9_]+)+(?:\[[^\]]*\])?)")


@dataclass(frozen=True)
class Check:
    field: str
    op: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class MacroRef:
    name: str


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and", "or", "not"
    children: tuple[Node, ...]


Node = Check | MacroRef | BoolOp


class ConditionError(ValueError):
    """A condition Falco's parser would refuse; the message says where."""


class ConditionParser:
    """Recursive descent over Falco's condition grammar: or > and > not > check."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Node:
        node = self._or()
        self._blank()
        if self.pos != len(self.text):
            self._fail("expected 'and', 'or' or the end")
        return node

    def _fail(self, what: str) -> NoReturn:
        raise ConditionError(f"{what} at {self.pos}: {self.text[self.pos : self.pos + 30]!r}")

    def _blank(self) -> bool:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in " \t\b\r\n":
            self.pos += 1
        return self.pos > start

    def _word(self, word: str) -> bool:
        if self.text.startswith(word, self.pos):
            self.pos += len(word)
            return True
        return False

    def _match(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def _quoted(self) -> str | None:
        if self.pos >= len(self.text) or self.text[self.pos] not in "'\"":
            return None
        quote, i = self.text[self.pos], self.pos + 1
        while i < len(self.text):
            if self.text[i] == quote and self.text[i - 1] != "\\":
                value = self.text[self.pos + 1 : i]
                self.pos = i + 1
                return value
            i += 1
        self._fail("unterminated string")

    def _chain(self, op: str, child: Callable[[], Node]) -> Node:
        children = [child()]
        self._blank()
        while self._word(op):
            if self._blank():
                children.append(child())
            elif self._word("("):
                children.append(self._embedded())
            else:
                self._fail(f"expected blank or '(' after '{op}'")
            self._blank()
        return children[0] if len(children) == 1 else BoolOp(op, tuple(children))

    def _or(self) -> Node:
        self._blank()
        return self._chain("or", self._and)

    def _and(self) -> Node:
        self._blank()
        return self._chain("and", self._not)

    def _not(self) -> Node:
        self._blank()
        negate = False
        while self._match(_NOT) is not None:
            negate = not negate
        if self._word("not("):
            negate = not negate
            child = self._embedded()
        else:
            child = self._check()
        return BoolOp("not", (child,)) if negate else child

    def _embedded(self) -> Node:
        child = self._or()
        self._blank()
        if not self._word(")"):
            self._fail("expected ')'")
        return child

    def _check(self) -> Node:
        self._blank()
        if self._word("("):
            return self._embedded()
        field = self._match(_FIELD)
        if field is not None:
            if self._word("["):
                arg = self._quoted() or self._match(_FIELD_ARG)
                if arg is None or not self._word("]"):
                    self._fail("expected a field argument and ']'")
                field = f"{field}[{arg}]"
            return self._comparison(field)
        name = self._match(_IDENTIFIER)
        if name is None:
            self._fail("expected '(', a field check or a macro")
        return MacroRef(name)

    def _comparison(self, field: str) -> Check:
        self._blank()
        for op in _UNARY_OPS:
            if self._word(op):
                return Check(field, op, ())
        for op in _NUM_OPS:
            if self._word(op):
                self._blank()
                number = self._match(_NUMBER)
                if number is None:
                    self._fail(f"expected a number after '{op}'")
                return Check(field, op, (number,))
        for op in _STR_OPS:
            if self._word(op):
                self._blank()
                value = self._quoted()
                if value is None:
                    value = self._match(_BARE)
                if value is None:
                    self._fail(f"expected a string after '{op.strip()}'")
                return Check(field, op.strip(), (value,))
        for op in _LIST_OPS:
            if self._word(op):
                self._blank()
                if not self._word("("):
                    list_name = self._match(_IDENTIFIER)  # a reference to a `list`
                    if list_name is None:
                        self._fail(f"expected a list after '{op}'")
                    return Check(field, op, (list_name,))
                values: list[str] = []
                self._blank()
                while not self._word(")"):
                    if values and not self._word(","):
                        self._fail("expected ',' or ')'")
                    self._blank()
                    value = self._quoted()
                    if value is None:
                        value = self._match(_BARE)
                    if value is None:
                        self._fail("expected a list value")
                    values.append(value)
                    self._blank()
                return Check(field, op, tuple(values))
        self._fail(f"expected an operator after {field!r}")


def parse_condition(text: str) -> Node:
    return ConditionParser(text).parse()


def walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, BoolOp):
        for child in node.children:
            yield from walk(child)


def event_types(node: Node) -> frozenset[str] | None:
    """The event types a condition is restricted to by its top-level conjuncts, or None."""
    conjuncts = node.children if isinstance(node, BoolOp) and node.op == "and" else (node,)
    for part in conjuncts:
        if isinstance(part, Check) and part.field == "evt.type" and part.op in ("=", "==", "in"):
            return frozenset(part.values)
        if isinstance(part, MacroRef) and part.name in STOCK_MACROS:
            return STOCK_MACROS[part.name]
    return None


def field_class(field: str) -> str:
    return field.split(".", 1)[0]


# ---------------------------------------------------------------------------------------------
# Loading.


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_rules_file() -> list[dict[str, Any]]:
    items = load_yaml(RULES_FILE)
    assert isinstance(items, list), "a Falco rules file is a YAML list"
    return items


def item_kind(item: dict[str, Any]) -> str:
    kinds = [k for k in ITEM_KEYS if k in item]
    assert len(kinds) == 1, f"a rules file item has exactly one kind, got {sorted(item)}"
    return kinds[0]


def config_files() -> dict[str, dict[str, Any]]:
    """The config.d files in the falco config ConfigMap, parsed."""
    manifest = load_yaml(CONFIG_MANIFEST)
    parsed = {}
    for key, text in manifest["data"].items():
        value = yaml.safe_load(text)
        assert isinstance(value, dict), f"{key} is not a YAML mapping"
        parsed[key] = value
    return parsed


def render_rules_configmap(rules_text: str) -> str:
    """The rules ConfigMap manifest for ``rules_text``: a literal block scalar holding the file."""
    # A literal block scalar keeps exactly one final newline and takes its indentation from the
    # first line: other shapes would not round-trip.
    if not rules_text.endswith("\n") or rules_text.endswith("\n\n"):
        raise ValueError("end the rules file with exactly one newline")
    if rules_text.startswith((" ", "\n")):
        raise ValueError("start the rules file with a non-blank line")
    body = "".join(f"    {line}" if line.strip() else "\n" for line in rules_text.splitlines(keepends=True))
    return (
        f"# Generated from {RULES_FILE.relative_to(ROOT)}: do not edit. Regenerate with\n"
        "#   .venv/bin/python tests/test_falco_config.py --write\n"
        "# Mount it as a directory (not subPath): a new version then reaches Falco, which reloads\n"
        "# changed rules files.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: {RULES_CONFIGMAP}\n"
        "data:\n"
        f"  {RULES_FILE.name}: |\n"
        f"{body}"
    )


def manifest_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path == KUSTOMIZATION:
            continue
        with path.open(encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    yield path, doc


# ---------------------------------------------------------------------------------------------
# The rules file against BASELINE_RULES.


def test_rules_file_items_are_falco_items() -> None:
    items = load_rules_file()
    for item in items:
        kind = item_kind(item)
        unknown = set(item) - ITEM_KEYS[kind]
        assert not unknown, f"{kind} {item.get(kind)!r}: keys Falco does not know: {sorted(unknown)}"
    versions = [item["required_engine_version"] for item in items if "required_engine_version" in item]
    # Falco's rules schema wants a string (semver); a bare number is a schema warning.
    assert len(versions) == 1
    assert isinstance(versions[0], str)
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions[0])


def test_rules_file_says_what_the_corpus_simulates() -> None:
    rules = [item for item in load_rules_file() if "rule" in item]
    # Same rules in the same order: with rule_matching "first", order decides which rule fires.
    assert [r["rule"] for r in rules] == [r.name for r in BASELINE_RULES]
    for yaml_rule, rule in zip(rules, BASELINE_RULES, strict=True):
        name = rule.name
        assert yaml_rule["condition"] == rule.falco_condition, name
        assert yaml_rule["output"] == rule.output, name
        assert RULE_PRIORITIES[yaml_rule["priority"].upper()] == rule.priority, name
        assert yaml_rule["tags"] == list(rule.tags), name
        assert yaml_rule.get("source", "syscall") == rule.source, name
        assert yaml_rule.get("enabled", True) is True, name
        assert isinstance(yaml_rule.get("desc"), str), f"{name}: Falco requires a desc"
        assert yaml_rule["desc"].strip(), name


@pytest.mark.parametrize("rule", BASELINE_RULES, ids=lambda r: r.name)
def test_condition_parses_with_known_macros_and_fields(rule: Rule) -> None:
    defined = {item["macro"] for item in load_rules_file() if "macro" in item}
    node = parse_condition(rule.falco_condition)
    macros = {n.name for n in walk(node) if isinstance(n, MacroRef)}
    assert macros <= defined | set(STOCK_MACROS), f"undefined macros: {macros - defined - set(STOCK_MACROS)}"
    fields = {n.field for n in walk(node) if isinstance(n, Check)}
    assert fields, "a condition without a field check"
    assert {field_class(f) for f in fields} <= FIELD_CLASSES, fields


@pytest.mark.parametrize("rule", BASELINE_RULES, ids=lambda r: r.name)
def test_condition_covers_the_event_types_the_corpus_routes_to_it(rule: Rule) -> None:
    # Falco warns about (and pays for) a rule not restricted to event types; and a corpus event type
    # the Falco condition excludes would be an alert real Falco never raises.
    types = event_types(parse_condition(rule.falco_condition))
    assert types is not None, "the condition does not restrict evt.type"
    assert set(rule.evt_types) <= types


@pytest.mark.parametrize("rule", BASELINE_RULES, ids=lambda r: r.name)
def test_output_fields_are_falco_fields(rule: Rule) -> None:
    fields = _OUTPUT_FIELD.findall(rule.output)
    assert fields
    assert {field_class(f) for f in fields} <= FIELD_CLASSES, fields
    # Every '%' starts a field (%container.info included: -pk's placeholder, empty since Falco 0.41).
    assert rule.output.count("%") == len(fields)


@pytest.mark.parametrize(
    ("condition", "macros", "types"),
    [
        ("evt.type in (execve, execveat) and evt.dir=<", set(), {"execve", "execveat"}),
        ("open_read and not fd.name pmatch (/dev, /proc)", {"open_read"}, {"open", "openat", "openat2"}),
        ('evt.type=connect and (fd.ip != "0.0.0.0" or not(proc.aname[2] = x))', set(), {"connect"}),
        ("not shell_procs and evt.rawres >= 0", {"shell_procs"}, None),
        ("proc.name in shell_binaries or fd.name glob '/proc/*/environ'", set(), None),
    ],
)
def test_condition_parser_reads_falco_syntax(
    condition: str, macros: set[str], types: set[str] | None
) -> None:
    node = parse_condition(condition)
    assert {n.name for n in walk(node) if isinstance(n, MacroRef)} == macros
    assert event_types(node) == (frozenset(types) if types is not None else None)


@pytest.mark.parametrize(
    "condition",
    [
        "evt.type in (execve, execveat",  # unbalanced
        "evt.type = ",  # missing value
        "evt.rawres >= zero",  # not a number
        "proc.name pmatch",  # missing list
        "evt.type=execve andnot proc.name=sh",  # 'and' needs a blank or '('
        "evt.type=execve proc.name=sh",  # missing boolean operator
        "fd.name contains 'unterminated",
        "proc.aname[2 = sh",
    ],
)
def test_condition_parser_refuses_what_falco_refuses(condition: str) -> None:
    with pytest.raises(ConditionError):
        parse_condition(condition)


# ---------------------------------------------------------------------------------------------
# Falco's settings against the edge and the corpus.


def test_config_files_use_only_falco_keys() -> None:
    for name, config in config_files().items():
        for key, value in config.items():
            assert key in CONFIG_KEYS, f"{name}: {key!r} is not a Falco setting aerie knows"
            allowed = CONFIG_KEYS[key]
            if allowed is None:
                continue
            for entry in value if isinstance(value, list) else [value]:
                unknown = set(entry) - allowed
                assert not unknown, f"{name}: {key} has unknown keys {sorted(unknown)}"


def test_each_config_file_has_one_job() -> None:
    files = config_files()
    assert set(files) == {COMMON_CONFIG, HTTP_CONFIG, GRPC_CONFIG}
    transports = {"http_output", "grpc", "grpc_output"}
    # The common file carries no transport, so mounting it with either transport file gives the
    # edge every alert exactly once.
    assert not set(files[COMMON_CONFIG]) & transports
    assert set(files[HTTP_CONFIG]) == {"http_output"}
    assert set(files[GRPC_CONFIG]) == {"grpc", "grpc_output"}


def test_alerts_are_json_with_output_and_tags() -> None:
    common = config_files()[COMMON_CONFIG]
    assert common["json_output"] is True
    assert common["json_include_output_property"] is True
    assert common["json_include_tags_property"] is True


def test_every_baseline_rule_loads_and_the_first_match_wins() -> None:
    common = config_files()[COMMON_CONFIG]
    minimum = RULE_PRIORITIES[common["priority"].upper()]
    # Falco loads rules at least as severe as `priority` (a lower number is more severe).
    assert all(rule.priority <= minimum for rule in BASELINE_RULES)
    assert common["rule_matching"] == "first"


def test_append_output_adds_exactly_the_extra_fields_to_syscall_rules() -> None:
    entries = config_files()[COMMON_CONFIG]["append_output"]
    assert len(entries) == 1
    (entry,) = entries
    # Only syscall rules get them, as the corpus renders (k8s_audit alerts have no process).
    assert entry["match"] == {"source": "syscall"}
    assert set(entry["match"]) <= APPEND_MATCH_KEYS
    fields = entry["extra_fields"]
    assert all(isinstance(f, str) for f in fields), "plain field names, not {name: format} maps"
    assert fields == list(EXTRA_FIELDS)
    assert {field_class(f) for f in fields} <= FIELD_CLASSES
    assert "extra_output" not in entry, "extra text would change `output` from what the corpus renders"


def test_rules_file_is_loaded_from_where_the_rules_configmap_is_mounted() -> None:
    entries = config_files()[COMMON_CONFIG]["rules_files"]
    assert len(entries) == 1
    path = Path(entries[0])
    assert path.is_absolute()
    assert path.name == RULES_FILE.name
    rules_manifest = load_yaml(RULES_MANIFEST)
    assert rules_manifest["metadata"]["name"] == RULES_CONFIGMAP
    assert list(rules_manifest["data"]) == [path.name]
    # Mounted as its own directory: a rules.d directory would load the file a second time.
    assert path.parent not in (Path("/etc/falco"), Path("/etc/falco/rules.d"))


def test_http_output_posts_to_the_edge_http_receiver_over_mtls(pki: dict[str, Pki]) -> None:
    http = config_files()[HTTP_CONFIG]["http_output"]
    assert http["enabled"] is True
    url = urlsplit(http["url"])
    assert url.scheme == "https"
    assert url.hostname is not None
    assert url.port is not None
    # The edge listens on the node's loopback by default, and is the URL's author: its `url` for
    # this address with TLS must be the URL Falco posts to.
    default_host = inspect.signature(HttpInput).parameters["host"].default
    assert url.hostname == default_host
    creds = pki["edge"]
    tls = ServerTls(cert=str(creds.cert), key=str(creds.key), ca=str(creds.ca))
    edge = HttpInput(host=url.hostname, port=url.port, tls=tls)
    assert edge.url == http["url"]
    # libcurl checks the edge's certificate against the URL's host: the edge certificate aerie
    # issues must name that address.
    cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(url.hostname) in san.get_values_for_type(x509.IPAddress)
    # Mutual TLS with a CA of our own; never skip verification.
    assert http["mtls"] is True
    assert http["insecure"] is False
    for key in ("ca_cert", "client_cert", "client_key"):
        assert Path(http[key]).is_absolute(), key
    assert len({Path(http[k]).parent for k in ("ca_cert", "client_cert", "client_key")}) == 1
    # The edge answers 415 to a Content-Encoding other than identity.
    assert http["compress_uploads"] is False


def test_grpc_serves_the_socket_the_edge_dials_by_default() -> None:
    grpc = config_files()[GRPC_CONFIG]
    assert grpc["grpc"]["enabled"] is True
    assert grpc["grpc_output"]["enabled"] is True
    assert grpc["grpc"]["bind_address"] == DEFAULT_ADDRESS
    address = parse_address(grpc["grpc"]["bind_address"])
    assert address.kind == "unix"


# ---------------------------------------------------------------------------------------------
# The Kubernetes objects.


def test_rules_configmap_is_generated_from_the_rules_file() -> None:
    rules_text = RULES_FILE.read_text(encoding="utf-8")
    manifest = load_yaml(RULES_MANIFEST)
    assert manifest["data"][RULES_FILE.name] == rules_text, (
        f"{RULES_MANIFEST.name} is stale: run `.venv/bin/python tests/test_falco_config.py --write`"
    )
    assert RULES_MANIFEST.read_text(encoding="utf-8") == render_rules_configmap(rules_text), (
        f"{RULES_MANIFEST.name} was edited by hand: run `.venv/bin/python tests/test_falco_config.py --write`"
    )


def test_manifests_validate_strictly() -> None:
    seen = []
    for path, doc in manifest_documents():
        error = validation_error(doc)
        assert error is None, f"{path.name}: {error}"
        seen.append((doc["kind"], doc["metadata"]["name"]))
    assert sorted(seen) == [("ConfigMap", "aerie-falco-config"), ("ConfigMap", RULES_CONFIGMAP)]


def test_configmaps_fit_and_have_valid_keys() -> None:
    for path, doc in manifest_documents():
        if doc["kind"] != "ConfigMap":
            continue
        for key in doc["data"]:
            # The API server's rule for ConfigMap keys (the OpenAPI schema does not check it).
            assert re.fullmatch(r"[-._a-zA-Z0-9]+", key), f"{path.name}: bad key {key!r}"
        size = sum(len(k) + len(v.encode()) for k, v in doc["data"].items())
        assert size < 1 << 20, f"{path.name}: {size} bytes, over the 1 MiB ConfigMap limit"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = sorted(kustomization["resources"])
    on_disk = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p != KUSTOMIZATION)
    assert listed == on_disk


def test_kustomize_build_validates_strictly() -> None:
    docs = kustomize_build(MANIFESTS)
    assert sorted(doc["metadata"]["name"] for doc in docs) == ["aerie-falco-config", RULES_CONFIGMAP]
    for doc in docs:
        error = validation_error(doc)
        assert error is None, f"kustomize build: {error}"
        assert doc["metadata"]["namespace"] == "falco"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aerie"
    rules = next(doc for doc in docs if doc["metadata"]["name"] == RULES_CONFIGMAP)
    assert rules["data"][RULES_FILE.name] == RULES_FILE.read_text(encoding="utf-8")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Regenerate daemonset/falco/falco-rules.yaml.")
    parser.add_argument("--write", action="store_true", help="write the rules ConfigMap manifest")
    args = parser.parse_args(argv)
    rendered = render_rules_configmap(RULES_FILE.read_text(encoding="utf-8"))
    if not args.write:
        sys.stdout.write(rendered)
        return 0
    RULES_MANIFEST.write_text(rendered, encoding="utf-8")
    print(f"wrote {RULES_MANIFEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
