"""The committed Falco stubs are what codegen produces now, and they carry Falco's wire contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from aerie.proto import codegen
from aerie.proto.falco import outputs_pb2, schema_pb2, version_pb2


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    generated = codegen.generate(tmp_path)
    names = sorted(p.name for p in generated)
    assert names == sorted(
        f"{Path(proto).stem}{suffix}"
        for proto in codegen.PROTO_FILES
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    )
    stale = [p.name for p in generated if p.read_bytes() != (codegen.PROTO_DIR / p.name).read_bytes()]
    assert not stale, f"run `python -m aerie.proto.codegen` and commit: {stale} differ"


def test_generated_imports_are_package_relative(tmp_path: Path) -> None:
    for path in codegen.generate(tmp_path):
        text = path.read_text()
        for module in ("schema_pb2", "outputs_pb2", "version_pb2"):
            assert f"\nimport {module}" not in text, f"{path.name} imports {module} absolutely"
    assert "from . import schema_pb2 as schema__pb2" in (tmp_path / "outputs_pb2.py").read_text()


def test_protoc_errors_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "protos"
    bad.mkdir()
    for name in codegen.PROTO_FILES:
        (bad / name).write_text('syntax = "proto3";\nmessage broken {\n')
    with pytest.raises(codegen.CodegenError, match=r"protoc exited with 1: .*schema.proto.*"):
        codegen.generate(tmp_path / "out", proto_dir=bad)


def test_cli_writes_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert codegen.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "outputs_pb2_grpc.py").exists()
    assert "outputs_pb2.py" in capsys.readouterr().out


def _fields(message: type) -> dict[str, tuple[int, str]]:
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    return {
        f.name: (f.number, f.message_type.full_name if f.message_type else f.enum_type.full_name)
        if (f.message_type or f.enum_type)
        else (f.number, "scalar")
        for f in descriptor.fields
    }


def test_outputs_contract_matches_falco() -> None:
    assert outputs_pb2.DESCRIPTOR.package == "falco.outputs"
    fields = {name: number for name, (number, _) in _fields(outputs_pb2.response).items()}
    assert fields == {
        "time": 1,
        "priority": 2,
        "source_deprecated": 3,
        "rule": 4,
        "output": 5,
        "output_fields": 6,
        "hostname": 7,
        "tags": 8,
        "source": 9,
    }
    types = _fields(outputs_pb2.response)
    assert types["time"][1] == "google.protobuf.Timestamp"
    assert types["priority"][1] == "falco.schema.priority"
    assert types["source_deprecated"][1] == "falco.schema.source"
    service = outputs_pb2.DESCRIPTOR.services_by_name["service"]
    sub, get = service.methods_by_name["sub"], service.methods_by_name["get"]
    assert (sub.client_streaming, sub.server_streaming) == (True, True)
    assert (get.client_streaming, get.server_streaming) == (False, True)
    assert sub.output_type.full_name == "falco.outputs.response"


def test_priority_enum_has_falco_numbers_and_aliases() -> None:
    assert [schema_pb2.priority.Value(n) for n in ("EMERGENCY", "WARNING", "DEBUG")] == [0, 4, 7]
    assert schema_pb2.priority.Value("informational") == schema_pb2.priority.Value("Informational") == 6
    assert schema_pb2.source.Value("k8s_audit") == 1


def test_version_contract_matches_falco() -> None:
    assert version_pb2.DESCRIPTOR.package == "falco.version"
    fields = {name: number for name, (number, _) in _fields(version_pb2.response).items()}
    assert fields == {
        "version": 1,
        "major": 2,
        "minor": 3,
        "patch": 4,
        "prerelease": 5,
        "build": 6,
        "engine_minor": 7,
        "engine_fields_checksum": 8,
        "engine_major": 9,
        "engine_patch": 10,
        "engine_version": 11,
    }
    method = version_pb2.DESCRIPTOR.services_by_name["service"].methods_by_name["version"]
    assert (method.client_streaming, method.server_streaming) == (False, False)
