#!/usr/bin/env python3
"""Regenerate the protobuf/gRPC stubs for snakepit_bridge.

Runs grpc_tools.protoc on ``proto/snakepit_bridge.proto`` (at the repository
root, one level above ``python/``) and writes the results into
``python/snakepit_bridge/generated/``. The gRPC module is rewritten to use a
relative import so the stubs work as a subpackage.

Usage:
    python scripts/gen_stubs.py                 # update the checked-in stubs
    python scripts/gen_stubs.py --out DIR       # write somewhere else
    python scripts/gen_stubs.py --proto FILE    # use another proto file

Idempotent: running it twice gives the same files.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PROTO = PYTHON_DIR.parent / "proto" / "snakepit_bridge.proto"
DEFAULT_OUT = PYTHON_DIR / "snakepit_bridge" / "generated"

# Files produced by protoc for snakepit_bridge.proto.
GENERATED_FILES = (
    "snakepit_bridge_pb2.py",
    "snakepit_bridge_pb2.pyi",
    "snakepit_bridge_pb2_grpc.py",
)


def _fix_imports(text: str, module: str) -> str:
    """Turn ``import X_pb2 as ...`` into ``from . import X_pb2 as ...``."""
    pattern = re.compile(rf"^import {re.escape(module)}_pb2 as ", re.MULTILINE)
    return pattern.sub(f"from . import {module}_pb2 as ", text)


def generate(proto: Path, out_dir: Path) -> list[Path]:
    """Generate the stubs for ``proto`` into ``out_dir``; return written paths."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(f"grpcio-tools is required to generate stubs: {exc}") from exc

    import grpc_tools

    proto = proto.resolve()
    if not proto.is_file():
        raise SystemExit(f"proto file not found: {proto}")

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    module = proto.stem

    with tempfile.TemporaryDirectory(prefix="snakepit-stubs-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(proto),
        ]
        code = protoc.main(args)
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")

        written: list[Path] = []
        for name in (f"{module}_pb2.py", f"{module}_pb2.pyi", f"{module}_pb2_grpc.py"):
            src = Path(tmp) / name
            text = src.read_text(encoding="utf-8")
            if name.endswith("_grpc.py"):
                text = _fix_imports(text, module)
            dest = out_dir / name
            dest.write_text(text, encoding="utf-8")
            written.append(dest)

    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC stubs (do not edit)."""\n', encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", type=Path, default=DEFAULT_PROTO)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    print(f"generating stubs from {args.proto} into {args.out}", file=sys.stderr)
    for path in generate(args.proto, args.out):
        print(f"  wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
