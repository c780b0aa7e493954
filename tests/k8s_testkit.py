"""Kubernetes checks shared by the manifest tests: strict schema validation and the kustomize build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import kubernetes_validate
import pytest
import yaml

K8S_VERSION: Final = "1.35"
"""A recent Kubernetes the manifests must validate against (kubernetes-validate ships its schemas)."""


def validation_error(doc: dict[str, Any]) -> str | None:
    """kubernetes-validate's strict verdict on one object: None, or where and why it fails."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}"
    return None


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` (or ``kustomize build``) makes of ``directory``; the test is
    skipped when neither tool is installed."""
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if kubectl:
        command = [kubectl, "kustomize", str(directory)]
    elif kustomize:
        command = [kustomize, "build", str(directory)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    built = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]
