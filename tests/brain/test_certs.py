from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from aerie.brain.certs import identity_of, spiffe_id
from aerie.brain.cli import main


def test_certs_init_writes_a_verifiable_chain_with_identities(tmp_path: Path) -> None:
    assert main(["certs", "init", str(tmp_path), "--component", "edge,agent-analyst"]) == 0
    assert identity_of((tmp_path / "agent-analyst.crt").read_bytes()) == "spiffe://aerie/agent/analyst"
    assert identity_of((tmp_path / "edge.crt").read_bytes()) == "spiffe://aerie/edge"
    assert (tmp_path / "edge.key").stat().st_mode & 0o077 == 0
    # The CA verifies the leaf as a TLS server for localhost (what the agents and receivers need).
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(tmp_path / "edge.crt", tmp_path / "edge.key")


def test_certs_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "init", str(tmp_path), "--component", "edge"]) == 0
    before = (tmp_path / "ca.crt").read_bytes()
    assert main(["certs", "init", str(tmp_path), "--component", "edge"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "ca.crt").read_bytes() == before
    assert main(["certs", "init", str(tmp_path), "--component", "edge", "--force"]) == 0
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_bad_environment_value_is_refused_with_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AERIE_DEMO_SEED", "seven")
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 2
    assert "AERIE_DEMO_SEED" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("certs", "demo"):
        assert command in out


def test_spiffe_ids() -> None:
    assert spiffe_id("agent-remediate") == "spiffe://aerie/agent/remediate"
    assert spiffe_id("brain") == "spiffe://aerie/brain"


def test_certs_init_adds_the_names_peers_dial(tmp_path: Path) -> None:
    """In a cluster the brain dials agents by Service name: the certificate must carry that name."""
    from cryptography import x509

    assert (
        main(["certs", "init", str(tmp_path), "--component", "agent-detect", "--host", "aerie-agent-detect"])
        == 0
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "agent-detect.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "aerie-agent-detect"]
    assert identity_of((tmp_path / "agent-detect.crt").read_bytes()) == spiffe_id("agent-detect")
