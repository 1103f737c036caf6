"""The checked-in stubs must match what scripts/gen_stubs.py produces from the proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent
GENERATED = PYTHON_DIR / "snakepit_bridge" / "generated"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_stubs", PYTHON_DIR / "scripts" / "gen_stubs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    gen = _load_generator()
    written = gen.generate(gen.DEFAULT_PROTO, tmp_path)
    assert {p.name for p in written} == set(gen.GENERATED_FILES)
    stale = [
        p.name
        for p in written
        if (GENERATED / p.name).read_text(encoding="utf-8") != p.read_text(encoding="utf-8")
    ]
    assert not stale, (
        f"generated stubs are out of date: {stale}; run `python scripts/gen_stubs.py` in python/"
    )


def test_grpc_module_uses_relative_import() -> None:
    text = (GENERATED / "snakepit_bridge_pb2_grpc.py").read_text(encoding="utf-8")
    assert "from . import snakepit_bridge_pb2" in text
    assert "\nimport snakepit_bridge_pb2" not in text


def test_stubs_import_as_subpackage() -> None:
    from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
    from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc

    assert pb.ToolChunk(chunk_id="0").chunk_id == "0"
    assert hasattr(pb_grpc, "BridgeServiceServicer")
    assert hasattr(pb_grpc, "ElixirBridgeStub")
