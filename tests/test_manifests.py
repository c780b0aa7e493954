"""The Kubernetes objects that run aerie's own processes (``daemonset/edge``, ``daemonset/brain``).

What must not drift, and what checks it here:

* every object validates with kubernetes-validate ``--strict``, each base's kustomization lists its
  files, and the ``kubectl kustomize`` build of the umbrella validates too (when kubectl or kustomize
  is installed);
* the edge's ``edge.toml`` loads with the edge's own loader (`load_config`), with the container's
  environment, and its paths, ports and peers agree with the pod: TLS files in the certificates
  mount, state and spool on the node's disk, the policy in its ConfigMap, the HTTP receiver where
  Falco's http_output posts (``daemonset/falco``);
* every container's arguments and ``AERIE_*`` variables parse with the ``aerie`` command's own parser
  (exact option names, no abbreviations), and what they say agrees with the code's defaults (agent
  ports from the registry, the MCP server's port, ops ports) and with the Services and probes;
* every certificate mount follows the ``aerie certs init`` layout the process reads, from a Secret
  named ``aerie-<component>-tls``; every Secret is documented in ``daemonset/README.md``, every
  ConfigMap and PVC exists;
* NetworkPolicies let connect exactly the pods whose identities the agents and the MCP server allow.

Nothing here needs a cluster or the network.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from k8s_testkit import kustomize_build, validation_error

from aerie.brain import cli
from aerie.brain.agents.registry import DEFAULT_ALLOWED, SPECS, parse_endpoints, parse_identities
from aerie.brain.certs import Pki
from aerie.brain.consumer import ConsumerConfig
from aerie.brain.mcp import attack_server
from aerie.brain.mcp.serving import MCP_PATH
from aerie.brain.mcp_cli import SERVERS
from aerie.brain.service import BrainSettings
from aerie.edge.config import ENV_PREFIX, ConfigError, EdgeConfig, load_config
from aerie.edge.daemon import build_input
from aerie.edge.threshold import decode_policy
from aerie.proto.identity import spiffe_id
from aerie.proto.ops import HEALTH_PATH, READY_PATH

ROOT: Final = Path(__file__).resolve().parents[1]
DAEMONSET: Final = ROOT / "daemonset"
BASES: Final = {"edge": DAEMONSET / "edge", "brain": DAEMONSET / "brain"}
README: Final = DAEMONSET / "README.md"
FALCO_CONFIG: Final = DAEMONSET / "falco" / "falco-config.yaml"

NAMESPACE: Final = "aerie"
IMAGE: Final = "ghcr.io/aerie/aerie:0.1.0"
NAME_LABEL: Final = "app.kubernetes.io/name"
CERTS_DIR: Final = "/etc/aerie/certs"
# Secret keys in cert-manager's layout, and the file each becomes in the `aerie certs init` layout.
CERT_ITEMS: Final = {"ca.crt": "ca.crt", "tls.crt": "{component}.crt", "tls.key": "{component}.key"}

# The edge's resident memory, measured by perf/bench_edge.py: ready, and at peak under load.
EDGE_RSS_READY_MB: Final = 285
EDGE_RSS_PEAK_MB: Final = 375

# ---------------------------------------------------------------------------------------------
# Reading the manifests.


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def manifest_files(base: Path) -> list[Path]:
    return sorted(p for p in base.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every object of the bases, read once (callers must not change them)."""
    found = []
    for base in BASES.values():
        for path in manifest_files(base):
            with path.open(encoding="utf-8") as f:
                found.extend((path, doc) for doc in yaml.safe_load_all(f) if doc)
    return tuple(found)


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def workloads() -> dict[str, dict[str, Any]]:
    return {**objects("DaemonSet"), **objects("Deployment")}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container per pod"
    container: dict[str, Any] = containers[0]
    return container


def named_port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name!r}"
    return int(ports[name])


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    return named_port(container, port) if isinstance(port, str) else int(port)


def mount_at(workload: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mount of the main container holding ``path`` (the deepest), and its volume."""
    target = PurePosixPath(path)
    mounts = [
        m
        for m in main_container(workload).get("volumeMounts", [])
        if target == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in target.parents
    ]
    assert mounts, f"{path} is on no volume of {workload['metadata']['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    return mount, volumes[mount["name"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------
# The `aerie` command's own parser.


def aerie_parser() -> argparse.ArgumentParser:
    """The parser `aerie.brain.cli.main` uses (options read their variables while it is built)."""
    return cli.build_parser()


def subcommand(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The parser of ``aerie WORDS...`` (``["agent", "run"]``)."""
    for word in words:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[word]
    return parser


def option_envs(parser: argparse.ArgumentParser) -> set[str]:
    """The variables `cli.option` and `cli.flag` name in the help of ``parser``'s options."""
    return {m for a in parser._actions for m in re.findall(r"\[env (AERIE_[A-Z0-9_]+)", a.help or "")}


def placeholder(entry: dict[str, Any]) -> str:
    """A value standing in for one from elsewhere (a Secret, the downward API)."""
    if "value" in entry:
        return str(entry["value"])
    source = entry["valueFrom"]
    if "secretKeyRef" in source:
        return f"postgresql://aerie@db.invalid/{source['secretKeyRef']['key']}"
    if "fieldRef" in source:
        return "node-from-downward-api"
    raise AssertionError(f"{entry['name']}: unexpected valueFrom {source}")


def parse_container(
    workload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """The container's command line as `aerie` parses it, in the container's environment."""
    container = main_container(workload)
    assert container["command"] == ["aerie"]
    args: list[str] = container["args"]
    for name in [n for n in os.environ if n.startswith("AERIE_")]:
        monkeypatch.delenv(name)
    env = {name: placeholder(entry) for name, entry in env_of(container).items()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = aerie_parser()
    words = args[:2]
    command = subcommand(parser, words)
    # argparse accepts unambiguous abbreviations; a manifest must name options exactly.
    known = {s for a in command._actions for s in a.option_strings}
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in known, (
                f"{words}: {arg} is not an option of `aerie {' '.join(words)}`"
            )
    envs = option_envs(command)
    for name in env:
        if words == ["edge", "run"] and name.startswith(ENV_PREFIX) and name not in envs:
            continue  # a setting of edge.toml: `load_config` checks it (edge_config)
        if name.startswith("AERIE_"):
            assert name in envs, f"{name} is not a variable of `aerie {' '.join(words)}`"
    try:
        namespace = parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"`aerie {' '.join(args)}` does not parse (exit {exc.code})")
    return namespace, command


# ---------------------------------------------------------------------------------------------
# The manifests as Kubernetes objects.


EXPECTED: Final = sorted(
    [
        ("ConfigMap", "aerie-edge-config"),
        ("ConfigMap", "aerie-edge-threshold"),
        ("DaemonSet", "aerie-edge"),
        ("Service", "aerie-edge-metrics"),
        ("Deployment", "aerie-brain"),
        ("Service", "aerie-brain-metrics"),
        ("NetworkPolicy", "aerie-brain"),
        ("Deployment", "aerie-mcp-attack"),
        ("Service", "aerie-mcp-attack"),
        ("NetworkPolicy", "aerie-mcp-attack"),
        *[
            (kind, f"aerie-agent-{name}")
            for name in SPECS
            for kind in ("Deployment", "Service", "NetworkPolicy")
        ],
        *[
            ("PersistentVolumeClaim", f"aerie-agent-{name}-state")
            for name, spec in SPECS.items()
            if spec.needs_state
        ],
    ]
)


def test_manifests_validate_strictly() -> None:
    seen = []
    for path, doc in documents():
        error = validation_error(doc)
        assert error is None, f"{path.relative_to(ROOT)}: {error}"
        assert "namespace" not in doc["metadata"], f"{path.name}: the bases are namespace-agnostic"
        seen.append((doc["kind"], doc["metadata"]["name"]))
    assert sorted(seen) == EXPECTED


def test_the_namespace_validates_and_is_the_umbrellas() -> None:
    namespace = load_yaml(ROOT / "daemonset" / "namespace.yaml")
    assert validation_error(namespace) is None
    umbrella = load_yaml(ROOT / "daemonset" / "kustomization.yaml")
    assert namespace["metadata"]["name"] == umbrella["namespace"]


def test_kustomizations_list_every_manifest() -> None:
    for base in BASES.values():
        kustomization = load_yaml(base / "kustomization.yaml")
        assert kustomization["kind"] == "Kustomization"
        assert "namespace" not in kustomization
        assert sorted(kustomization["resources"]) == [p.name for p in manifest_files(base)]
    umbrella = load_yaml(DAEMONSET / "kustomization.yaml")
    assert umbrella["namespace"] == NAMESPACE
    # Not falco/: its ConfigMaps belong in Falco's namespace, which this namespace would override.
    assert sorted(umbrella["resources"]) == sorted(BASES)


def test_kustomize_build_validates_strictly() -> None:
    docs = kustomize_build(DAEMONSET)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == EXPECTED
    for doc in docs:
        error = validation_error(doc)
        assert error is None, f"kustomize build: {error}"
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aerie"


def test_pods_are_hardened() -> None:
    for name, workload in workloads().items():
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, f"{name}: no process calls the Kubernetes API"
        # A Service named aerie-edge-x would inject AERIE_EDGE_X_PORT=tcp://..., which the edge
        # refuses as an unknown setting and the other commands would read as an option.
        assert pod["enableServiceLinks"] is False, name
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            where = f"{name}/{container['name']}"
            assert container["image"] == IMAGE, where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
        for container in pod["containers"]:
            assert "add" not in container["securityContext"]["capabilities"], name
            assert "runAsUser" not in container["securityContext"], f"{name}: the pod's non-root user"
        for container in pod.get("initContainers", []):
            assert container["securityContext"]["capabilities"].get("add", []) == ["CHOWN"], name


def test_probes_use_the_ops_paths() -> None:
    for name, workload in workloads().items():
        container = main_container(workload)
        ops = named_port(container, "ops")
        assert container["livenessProbe"]["httpGet"]["path"] == HEALTH_PATH, name
        assert container["readinessProbe"]["httpGet"]["path"] == READY_PATH, name
        probes = [container[p] for p in ("livenessProbe", "readinessProbe", "startupProbe") if p in container]
        for probe in probes:
            assert probe_port(container, probe) == ops, name
        if "startupProbe" in container:
            assert container["startupProbe"]["httpGet"]["path"] == HEALTH_PATH, name


def test_every_referenced_object_exists_or_is_documented() -> None:
    configmaps, claims = objects("ConfigMap"), objects("PersistentVolumeClaim")
    readme = README.read_text(encoding="utf-8")
    secrets: dict[str, set[str]] = {}
    for name, workload in workloads().items():
        pod = pod_spec(workload)
        for volume in pod["volumes"]:
            if "configMap" in volume:
                configmap = configmaps.get(volume["configMap"]["name"])
                assert configmap is not None, f"{name}: no ConfigMap {volume['configMap']['name']}"
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in configmap["data"], name
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"]["items"]}
                secrets.setdefault(volume["secret"]["secretName"], set()).update(keys)
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            assert "envFrom" not in container, name
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in configmaps[ref["configMapKeyRef"]["name"]]["data"]
                if "secretKeyRef" in ref:
                    secrets.setdefault(ref["secretKeyRef"]["name"], set()).add(ref["secretKeyRef"]["key"])
    assert secrets
    # Secrets come from the operator (aerie certs init, cert-manager): the README names each one
    # (agents' by the pattern aerie-agent-NAME-tls) and its keys.
    for secret, keys in secrets.items():
        documented = re.sub(r"^aerie-agent-(\w+)-tls$", "aerie-agent-NAME-tls", secret)
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{documented}`")]
        assert len(rows) == 1, f"{secret} is not documented in {README.relative_to(ROOT)}"
        for key in keys:
            assert f"`{key}`" in rows[0], f"{secret}: key {key} is not documented"


def assert_certs_layout(workload: dict[str, Any], directory: str, component: str) -> None:
    """``directory`` is the Secret ``aerie-<component>-tls`` renamed to the `aerie certs init` layout."""
    mount, volume = mount_at(workload, directory)
    assert mount["mountPath"] == directory
    assert mount.get("readOnly") is True
    assert "subPath" not in mount, "subPath mounts do not follow a rotated certificate"
    secret = volume["secret"]
    assert secret["secretName"] == f"aerie-{component}-tls"
    items = {item["key"]: item["path"] for item in secret["items"]}
    assert items == {key: path.format(component=component) for key, path in CERT_ITEMS.items()}


# ---------------------------------------------------------------------------------------------
# The edge.


def edge() -> dict[str, Any]:
    return objects("DaemonSet")["aerie-edge"]


def edge_config_path(workload: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    namespace, _ = parse_container(workload, monkeypatch)
    assert (namespace.command, namespace.edge_command) == ("edge", "run")
    config: Path = namespace.config
    return config


def edge_toml(workload: dict[str, Any], config_path: Path) -> str:
    mount, volume = mount_at(workload, str(config_path))
    assert mount["mountPath"] == str(config_path), "edge.toml is mounted as a file"
    configmap = objects("ConfigMap")[volume["configMap"]["name"]]
    text: str = configmap["data"][mount["subPath"]]
    return text


def edge_environ(workload: dict[str, Any]) -> dict[str, str]:
    return {name: placeholder(entry) for name, entry in env_of(main_container(workload)).items()}


@pytest.fixture
def edge_config(pki: dict[str, Pki], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EdgeConfig:
    """``edge.toml`` loaded by `load_config` as the pod would, its certificates mount standing in a
    temporary directory filled from the test PKI under the file names the Secret's items give."""
    workload = edge()
    text = edge_toml(workload, edge_config_path(workload, monkeypatch))
    environ = edge_environ(workload)
    # In the pod the files exist; here they do not, and the TLS settings check that they do.
    as_is = tmp_path / "edge.toml"
    as_is.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"'{CERTS_DIR}/")):
        load_config(as_is, environ=environ)
    _, volume = mount_at(workload, CERTS_DIR)
    stand_in = tmp_path / "certs"
    stand_in.mkdir()
    sources = {"ca.crt": pki["edge"].ca, "tls.crt": pki["edge"].cert, "tls.key": pki["edge"].key}
    for item in volume["secret"]["items"]:
        shutil.copyfile(sources[item["key"]], stand_in / item["path"])
    assert text.count(f"{CERTS_DIR}/") == 3
    rewritten = tmp_path / "edge-here.toml"
    rewritten.write_text(text.replace(f"{CERTS_DIR}/", f"{stand_in}/"), encoding="utf-8")
    config = load_config(rewritten, environ=environ)
    # Apart from the certificates' directory, the settings the pod gets.
    tls = config.input.http.tls
    assert tls is not None
    for field in ("cert", "key", "ca"):
        assert Path(getattr(tls, field)).parent == stand_in
    return config


def test_edge_toml_loads_with_the_edge_loader(edge_config: EdgeConfig) -> None:
    # Every key set explicitly is a real one: load_config refuses unknown keys (forbid_unknown_fields).
    assert edge_config.input.kind == "http"


def test_edge_environment_is_known_to_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    workload = edge()
    environ = edge_environ(workload)
    assert not [n for n in environ if n.startswith("AERIE_") and not n.startswith(ENV_PREFIX)]
    env = env_of(main_container(workload))
    # The daemon names its node from $NODE_NAME unless edge.toml sets `node`.
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    text = edge_toml(workload, edge_config_path(workload, monkeypatch))
    assert "node" not in tomllib.loads(text)
    monkeypatch.setenv("NODE_NAME", "worker-7")
    assert EdgeConfig().node_name == "worker-7"
    # numba's cache must be writable and outlive the pod.
    mount, volume = mount_at(workload, env["NUMBA_CACHE_DIR"]["value"])
    assert not mount.get("readOnly")
    assert "hostPath" in volume


def test_edge_receives_falco_http_output(edge_config: EdgeConfig) -> None:
    falco = load_yaml(FALCO_CONFIG)["data"]["aerie-http.yaml"]
    url = urlsplit(yaml.safe_load(falco)["http_output"]["url"])
    http = edge_config.input.http
    # The receiver the daemon builds from these settings serves the URL Falco posts to.
    assert build_input(edge_config).url == urlunsplit(url)
    assert http.allowed_identities == [spiffe_id("falco")]
    assert http.tls is not None
    assert http.tls.mutual
    # Falco posts to its own loopback: the edge must share the node's network, and still resolve
    # the cluster's names (Kafka).
    pod = pod_spec(edge())
    assert http.host == "127.0.0.1"
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert named_port(main_container(edge()), "falco-http") == http.port
    assert_certs_layout(edge(), CERTS_DIR, "edge")
    for field in ("cert", "key", "ca"):
        assert Path(getattr(http.tls, field)).name in {"ca.crt", "edge.crt", "edge.key"}


def test_edge_keeps_state_and_spool_on_the_node(edge_config: EdgeConfig) -> None:
    workload = edge()
    assert edge_config.model.state_file is not None
    for path in (edge_config.model.state_file, edge_config.spool.dir):
        mount, volume = mount_at(workload, path)
        assert not mount.get("readOnly"), path
        assert volume["hostPath"]["path"] == mount["mountPath"], path
        assert PurePosixPath("/var/lib/aerie") in PurePosixPath(volume["hostPath"]["path"]).parents, path
    # The kubelet creates the directory owned by root; the init container gives it to the pod's user.
    state_mount, _ = mount_at(workload, edge_config.spool.dir)
    (init,) = pod_spec(workload)["initContainers"]
    user = pod_spec(workload)["securityContext"]
    assert init["command"] == ["chown", f"{user['runAsUser']}:{user['runAsGroup']}", state_mount["mountPath"]]
    assert [m["mountPath"] for m in init["volumeMounts"]] == [state_mount["mountPath"]]
    # Model bundles: read-only here, on the node's disk.
    mount, volume = mount_at(workload, edge_config.model.dir)
    assert mount["readOnly"] is True
    assert volume["hostPath"]["path"] == edge_config.model.dir


def test_edge_threshold_policy_is_the_mounted_configmap(edge_config: EdgeConfig) -> None:
    source = edge_config.threshold.source
    assert source is not None
    mount, volume = mount_at(edge(), source)
    # A directory mount: the kubelet swaps the file when the ConfigMap changes; a subPath would not.
    assert "subPath" not in mount
    key = str(PurePosixPath(source).relative_to(mount["mountPath"]))
    data = objects("ConfigMap")[volume["configMap"]["name"]]["data"][key]
    policy = decode_policy(data.encode())
    # The base sets no threshold: every node uses its bundle's calibrated one.
    assert policy.threshold_for("any-node") is None


def test_edge_ports_grace_and_resources(edge_config: EdgeConfig) -> None:
    workload = edge()
    container = main_container(workload)
    assert named_port(container, "ops") == edge_config.ops.port
    assert edge_config.ops.host == "0.0.0.0"
    service = objects("Service")["aerie-edge-metrics"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(edge_config.ops.port, "ops")]
    pod = pod_spec(workload)
    assert pod["terminationGracePeriodSeconds"] > edge_config.pipeline.drain_timeout_s
    assert {"operator": "Exists"} in pod["tolerations"], "runs on every node, tainted or not"
    assert edge_config.kafka.bootstrap_servers == f"kafka.{NAMESPACE}.svc:9092"
    resources = container["resources"]
    assert mebibytes(resources["limits"]["memory"]) * 2**20 > EDGE_RSS_PEAK_MB * 10**6
    assert mebibytes(resources["requests"]["memory"]) * 2**20 > EDGE_RSS_READY_MB * 10**6


def mebibytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, f"memory {quantity!r}: write it in Mi or Gi"
    return int(match[1]) * (1024 if match[2] == "Gi" else 1)


# ---------------------------------------------------------------------------------------------
# The brain, the agents and the MCP server.


def service_url(name: str, port_name: str) -> str:
    """``https://<Service>:<port>`` of the Service ``name``'s port ``port_name``."""
    service = objects("Service")[name]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == port_name]
    return f"https://{name}:{port['port']}"


def assert_service_targets(name: str, workload: dict[str, Any]) -> None:
    """Service ``name`` selects ``workload``'s pods, each port onto the container port of its name."""
    service = objects("Service")[name]
    assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
    container = main_container(workload)
    for port in service["spec"]["ports"]:
        assert port["targetPort"] == port["name"], name
        assert port["port"] == named_port(container, port["name"]), name


@pytest.mark.parametrize("agent", list(SPECS))
def test_agent_deployment(agent: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SPECS[agent]
    name = f"aerie-{spec.component}"
    workload = workloads()[name]
    args, _ = parse_container(workload, monkeypatch)
    assert (args.command, args.agent_command, args.name) == ("agent", "run", agent)
    container = main_container(workload)
    # The registry's port, listening on the pod's address, with the ops endpoints on.
    assert args.port == spec.port == named_port(container, "a2a")
    assert args.host == "0.0.0.0"
    assert args.ops_port == named_port(container, "ops")
    assert_service_targets(name, workload)
    assert args.public_url == service_url(name, "a2a")
    assert_certs_layout(workload, str(args.certs), spec.component)
    assert pod_spec(workload)["terminationGracePeriodSeconds"] > args.grace
    if spec.needs_state:
        assert args.state_dir is not None, "remediate and notify refuse to start without --state-dir"
        mount, volume = mount_at(workload, str(args.state_dir))
        assert not mount.get("readOnly")
        assert "persistentVolumeClaim" in volume
        # SQLite on a ReadWriteOnce claim: one writer, the old pod gone before the new one starts.
        assert workload["spec"]["replicas"] == 1
        assert workload["spec"]["strategy"]["type"] == "Recreate"
    if agent == "analyst":
        assert args.mcp_attack == service_url("aerie-mcp-attack", "mcp") + MCP_PATH
    else:
        assert args.mcp_attack is None, "only the analyst maps ATT&CK"


def test_mcp_attack_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"aerie-{attack_server.COMPONENT}"
    workload = workloads()[name]
    args, _ = parse_container(workload, monkeypatch)
    assert (args.command, args.mcp_command, args.name) == ("mcp", "run", "attack")
    assert args.name in SERVERS
    container = main_container(workload)
    assert args.port == attack_server.DEFAULT_PORT == named_port(container, "mcp")
    assert args.host == "0.0.0.0"
    assert args.ops_port == named_port(container, "ops")
    assert args.insecure_http is False
    assert_service_targets(name, workload)
    assert_certs_layout(workload, str(args.certs), attack_server.COMPONENT)
    assert pod_spec(workload)["terminationGracePeriodSeconds"] > args.grace


def test_brain_deployment(edge_config: EdgeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    workload = workloads()["aerie-brain"]
    args, _ = parse_container(workload, monkeypatch)
    assert (args.command, args.brain_command) == ("brain", "run")
    # Consumes what the edge publishes.
    assert args.kafka == edge_config.kafka.bootstrap_servers
    assert args.topic == edge_config.kafka.topic
    ConsumerConfig(
        bootstrap_servers=args.kafka,
        topic=args.topic,
        dlq_topic=args.dlq_topic,
        group_id=args.group,
        session_timeout_ms=args.session_timeout,
        heartbeat_interval_ms=args.heartbeat_interval,
        librdkafka=args.kafka_option,
    )
    # Every agent at its Service, on the port that reaches its container.
    endpoints = parse_endpoints(args.agents)
    assert endpoints == {agent: service_url(f"aerie-agent-{agent}", "a2a") for agent in SPECS}
    for agent in SPECS:
        assert_service_targets(f"aerie-agent-{agent}", workloads()[f"aerie-agent-{agent}"])
    assert args.identity == "brain"
    assert_certs_layout(workload, str(args.certs), args.identity)
    container = main_container(workload)
    assert args.ops_port == BrainSettings.ops_port == named_port(container, "ops")
    assert_service_targets("aerie-brain-metrics", workload)
    # The stores come from the Secret through the variables --audit and --checkpoints read (else
    # they would be the SQLite defaults).
    env = env_of(container)
    for variable in ("AERIE_AUDIT_URL", "AERIE_CHECKPOINTS_URL"):
        assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == "aerie-brain-db"
    assert args.audit.startswith("postgresql://")
    assert args.checkpoints.startswith("postgresql://")
    pod = pod_spec(workload)
    assert pod["terminationGracePeriodSeconds"] > args.drain_timeout
    assert workload["spec"]["replicas"] == 1
    assert workload["spec"]["strategy"]["type"] == "Recreate"


# ---------------------------------------------------------------------------------------------
# NetworkPolicies against the identity allow-lists.


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "this check reads matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def ingress_allowed(dest: dict[str, str], source: dict[str, str], port: int) -> bool:
    """Whether the NetworkPolicies let a pod labelled ``source`` connect to ``dest`` on ``port``
    (same namespace, TCP); a pod no policy selects for ingress accepts everything."""
    policies = [
        p["spec"]
        for p in objects("NetworkPolicy").values()
        if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], dest)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy.get("ingress", []):
            peers = rule.get("from")
            ports = rule.get("ports")
            assert all(set(peer) == {"podSelector"} for peer in peers or [])
            assert all(p.get("protocol", "TCP") == "TCP" and isinstance(p["port"], int) for p in ports or [])
            if peers is not None and not any(selects(peer["podSelector"], source) for peer in peers):
                continue
            if ports is not None and port not in {p["port"] for p in ports}:
                continue
            return True
    return False


def component_of(identity: str) -> str:
    component = identity.removeprefix("spiffe://aerie/").replace("/", "-")
    assert spiffe_id(component) == identity
    return component


def pod_labels(name: str) -> dict[str, str]:
    labels: dict[str, str] = workloads()[name]["spec"]["template"]["metadata"]["labels"]
    return labels


SOURCES: Final = ("aerie-cli", "aerie-edge", "someone-else")


def sources() -> dict[str, dict[str, str]]:
    """Every pod of the manifests, the operator's CLI pod, and a stranger."""
    named = {name: {NAME_LABEL: name} for name in SOURCES}
    return {**named, **{name: pod_labels(name) for name in workloads()}}


def assert_reachable_by(dest: str, port: int, allowed: tuple[str, ...]) -> None:
    expected = {f"aerie-{component_of(identity)}" for identity in allowed}
    reach = {name for name, labels in sources().items() if ingress_allowed(pod_labels(dest), labels, port)}
    assert reach == expected, (
        f"{dest}:{port} reachable from {sorted(reach)}, identities allow {sorted(expected)}"
    )


def allowed_identities(
    name: str, default: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, ...]:
    """Who the process ``name`` lets in: its --allow (or variable), else the code's default."""
    args, _ = parse_container(workloads()[name], monkeypatch)
    return parse_identities(args.allow) if args.allow is not None else default


@pytest.mark.parametrize("agent", list(SPECS))
def test_agents_accept_connections_only_from_allowed_identities(
    agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"aerie-agent-{agent}"
    allowed = allowed_identities(name, DEFAULT_ALLOWED, monkeypatch)
    assert_reachable_by(name, SPECS[agent].port, allowed)
    ops = named_port(main_container(workloads()[name]), "ops")
    assert all(ingress_allowed(pod_labels(name), labels, ops) for labels in sources().values())


def test_mcp_attack_accepts_connections_only_from_the_analyst(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"aerie-{attack_server.COMPONENT}"
    allowed = allowed_identities(name, attack_server.DEFAULT_ALLOWED, monkeypatch)
    assert allowed == (spiffe_id("agent-analyst"),)
    assert_reachable_by(name, attack_server.DEFAULT_PORT, allowed)


def test_brain_accepts_connections_only_on_its_ops_port() -> None:
    labels = pod_labels("aerie-brain")
    ops = named_port(main_container(workloads()["aerie-brain"]), "ops")
    assert all(ingress_allowed(labels, source, ops) for source in sources().values())
    for port in (*[s.port for s in SPECS.values()], attack_server.DEFAULT_PORT, 8080):
        assert not any(ingress_allowed(labels, source, port) for source in sources().values())


def test_every_brain_side_pod_has_an_ingress_policy() -> None:
    for name, workload in workloads().items():
        if pod_spec(workload).get("hostNetwork"):
            continue  # NetworkPolicy does not apply to pods on the host network
        labels = pod_labels(name)
        assert any(selects(p["spec"]["podSelector"], labels) for p in objects("NetworkPolicy").values()), name
