"""The checked-in stubs must match what scripts/gen_stubs.py produces from the proto."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import warnings
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent
GENERATED = PYTHON_DIR / "snakepit_bridge" / "generated"
REGENERATE = "run `python scripts/gen_stubs.py` in python/ and commit the result"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_stubs", PYTHON_DIR / "scripts" / "gen_stubs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _descriptor(pb2_text: str) -> bytes:
    match = re.search(r"AddSerializedFile\((b'.*?')\)", pb2_text, re.S)
    assert match, "no serialized descriptor found in the pb2 module"
    return ast.literal_eval(match.group(1))  # a bytes literal written by protoc


def _rpc_paths(grpc_text: str) -> list[str]:
    return sorted(set(re.findall(r"'(/snakepit\.bridge\.\w+/\w+)'", grpc_text)))


def _recorded_tools_version(grpc_text: str) -> str:
    match = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_text)
    return match.group(1) if match else ""


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    gen = _load_generator()
    written = {p.name: p.read_text(encoding="utf-8") for p in gen.generate(gen.DEFAULT_PROTO, tmp_path)}
    checked_in = {name: (GENERATED / name).read_text(encoding="utf-8") for name in written}
    assert set(written) == set(gen.GENERATED_FILES)

    recorded = _recorded_tools_version(checked_in["snakepit_bridge_pb2_grpc.py"])
    installed = importlib.metadata.version("grpcio-tools")
    if recorded == installed:
        stale = [name for name in written if written[name] != checked_in[name]]
        assert not stale, f"generated stubs are out of date: {stale}; {REGENERATE}"
        return

    # Another grpcio-tools formats the files differently; what must still
    # agree is the proto they encode.
    warnings.warn(
        f"stubs were generated with grpcio-tools {recorded}, {installed} is installed; "
        "comparing the encoded proto only",
        stacklevel=2,
    )
    assert _descriptor(checked_in["snakepit_bridge_pb2.py"]) == _descriptor(written["snakepit_bridge_pb2.py"]), (
        f"the checked-in stubs encode a different proto; {REGENERATE}"
    )
    assert _rpc_paths(checked_in["snakepit_bridge_pb2_grpc.py"]) == _rpc_paths(
        written["snakepit_bridge_pb2_grpc.py"]
    ), f"the checked-in gRPC stubs list different RPCs; {REGENERATE}"


def test_other_grpcio_tools_version_compares_the_proto(tmp_path: Path, monkeypatch) -> None:
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "0.0.0" if name == "grpcio-tools" else real_version(name)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test_checked_in_stubs_match_the_proto(tmp_path)
    assert any("comparing the encoded proto only" in str(w.message) for w in caught)


def test_descriptor_comparison_notices_a_changed_proto(tmp_path: Path) -> None:
    gen = _load_generator()
    proto = tmp_path / "snakepit_bridge.proto"
    proto.write_text(
        gen.DEFAULT_PROTO.read_text(encoding="utf-8").replace(
            "message PingRequest {\n  string message = 1;\n}",
            "message PingRequest {\n  string message = 1;\n  string extra = 2;\n}",
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    gen.generate(proto, out)
    changed = (out / "snakepit_bridge_pb2.py").read_text(encoding="utf-8")
    current = (GENERATED / "snakepit_bridge_pb2.py").read_text(encoding="utf-8")
    assert _descriptor(changed) != _descriptor(current)


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
