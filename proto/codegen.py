"""Compile Falco's .proto files in ``proto/falco/`` into the Python modules committed beside them.

``python -m aerie.proto.codegen`` regenerates ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``
in place; ``--out DIR`` writes them elsewhere (the codegen test compares the two byte for byte).

protoc writes imports the way the .proto files spell them (``import schema_pb2``), which only
works with ``proto/falco`` itself on ``sys.path``. Falco's own layout must stay as is (the .proto
files import ``"schema.proto"``), so the generated imports are rewritten into package-relative
ones (``from . import schema_pb2``) and the modules work as ``aerie.proto.falco.*``.

Failure mode: `CodegenError` when protoc rejects a file or the grpc-tools package is missing;
nothing is written to the output folder in that case except what protoc managed to write.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Final

__all__ = ["PROTO_DIR", "PROTO_FILES", "CodegenError", "generate", "main"]

PROTO_DIR: Final = Path(__file__).resolve().parent / "falco"
PROTO_FILES: Final = ("schema.proto", "outputs.proto", "version.proto")

# `import schema_pb2 as schema__pb2` (and the `.pyi` variant `import schema_pb2 as _schema_pb2`)
# for any module generated from these files; google.protobuf imports are absolute and stay.
_LOCAL_MODULES: Final = "|".join(re.escape(Path(f).stem) for f in PROTO_FILES)
_LOCAL_IMPORT: Final = re.compile(rf"^import ({_LOCAL_MODULES})(_pb2)( as \w+)?$", re.MULTILINE)


class CodegenError(RuntimeError):
    """protoc failed, or grpc-tools is not installed."""


@contextlib.contextmanager
def _fd_stderr_captured() -> Iterator[list[str]]:
    """Capture file descriptor 2 into the yielded list (filled on exit): protoc runs in-process
    and prints its diagnostics from C++, below Python's `sys.stderr`."""
    sys.stderr.flush()
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read())


def _rewrite_imports(text: str) -> str:
    return _LOCAL_IMPORT.sub(lambda m: f"from . import {m[1]}{m[2]}{m[3] or ''}", text)


def generate(out_dir: Path | None = None, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Compile ``PROTO_FILES`` from ``proto_dir`` into ``out_dir`` (default: ``proto_dir``).

    Returns the generated files, sorted. Raises `CodegenError` with protoc's message on failure.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # a dev dependency: the runtime never needs it
        raise CodegenError(f"grpcio-tools is required to compile protos: {exc}") from None
    out_dir = proto_dir if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="aerie-codegen-") as scratch:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--proto_path={well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(proto_dir / name) for name in PROTO_FILES),
        ]
        with _fd_stderr_captured() as captured:
            status = protoc.main(args)
        if status != 0:
            raise CodegenError(f"protoc exited with {status}: {''.join(captured).strip()}")
        written = []
        for generated in sorted(Path(scratch).iterdir()):
            target = out_dir / generated.name
            target.write_text(_rewrite_imports(generated.read_text()))
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aerie.proto.codegen",
        description="Compile Falco's .proto files into aerie.proto.falco's Python modules.",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: beside the protos)")
    args = parser.parse_args(argv)
    try:
        for path in generate(args.out):
            print(path)
    except CodegenError as exc:
        print(f"codegen: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
