"""snakepit_bridge.zero_copy on its own: markers in, handles out, region
files made, handed over and removed. (The Elixir suite runs the same paths
against the real native core.)"""

from __future__ import annotations

import base64
import gc
import os
import secrets
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest

from snakepit_bridge import serialization, zero_copy


@pytest.fixture
def region_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "regions"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv(zero_copy.DIR_ENV, str(directory))
    monkeypatch.delenv(zero_copy.MAX_BYTES_ENV, raising=False)
    yield directory


def _region_file(directory: Path, kind: str, data: bytes) -> Path:
    path = directory / f"{secrets.token_hex(16)}.{kind}"
    path.write_bytes(data)
    return path


def _marker(**body: object) -> dict:
    return {zero_copy.MARKER: {"device": "cpu", "owner": "elixir", **body}}


def _sent(handle: zero_copy.ZeroCopyHandle) -> dict:
    """The marker as it goes on the wire, through the real serializer."""
    return serialization.loads(serialization.dumps({"h": handle}))["h"][zero_copy.MARKER]


def test_a_dlpack_marker_becomes_a_private_writable_array_over_the_file(region_dir: Path) -> None:
    data = np.arange(12, dtype=np.float32).tobytes()
    path = _region_file(region_dir, "dlpack", data)
    args = {"x": [_marker(kind="dlpack", path=str(path), bytes=48, dtype="float32", shape=[3, 4])]}

    array = zero_copy.resolve(args)["x"][0]

    assert array.dtype == np.float32 and array.shape == (3, 4)
    assert array.sum() == 66.0
    assert np.from_dlpack(array).shape == (3, 4)
    assert memoryview(array).nbytes == 48
    array[0, 0] = 100.0  # copy-on-write: the shared file is untouched
    assert path.read_bytes() == data


def test_an_inline_marker_works_without_a_region_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(zero_copy.DIR_ENV, "")
    raw = np.array([1, 2, 3], dtype=np.int16).tobytes()
    marker = _marker(kind="dlpack", inline=base64.b64encode(raw).decode(), bytes=6, dtype="int16", shape=[3])
    assert zero_copy.resolve(marker).tolist() == [1, 2, 3]


def test_an_arrow_marker_becomes_a_table_over_the_mapping(region_dir: Path) -> None:
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    path = _region_file(region_dir, "arrow", data)

    seen = zero_copy.resolve(_marker(kind="arrow", path=str(path), bytes=len(data)))

    assert isinstance(seen, pa.Table) and seen.equals(table)


def test_markers_naming_other_files_or_gone_regions_are_refused(region_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / f"{'a' * 32}.dlpack"
    outside.write_bytes(b"\0" * 4)
    with pytest.raises(ValueError, match="not a region of this VM"):
        zero_copy.resolve(_marker(kind="dlpack", path=str(outside), bytes=4, dtype="uint8"))
    with pytest.raises(ValueError, match="not a region of this VM"):
        zero_copy.resolve(_marker(kind="dlpack", path="/etc/passwd", bytes=4, dtype="uint8"))
    gone = region_dir / f"{'b' * 32}.dlpack"
    with pytest.raises(ValueError, match="region is gone"):
        zero_copy.resolve(_marker(kind="dlpack", path=str(gone), bytes=4, dtype="uint8"))
    with pytest.raises(ValueError, match="device"):
        zero_copy.resolve(_marker(kind="dlpack", device="cuda", inline="", bytes=0))


def test_an_array_made_by_empty_is_exported_without_a_copy(region_dir: Path) -> None:
    out = zero_copy.empty((4, 5), "float64")
    out[...] = 2.5
    [path] = list(region_dir.iterdir())

    body = _sent(zero_copy.export(out))

    assert body["path"] == str(path)
    assert body["dtype"] == "float64" and body["shape"] == [4, 5] and body["bytes"] == 160
    assert np.frombuffer(path.read_bytes(), dtype=np.float64).tolist() == [2.5] * 20
    del out
    gc.collect()
    assert path.exists(), "a sent region is Elixir's to remove"


def test_other_arrays_and_buffers_are_copied_once_into_a_new_region(region_dir: Path) -> None:
    source = np.arange(10, dtype=np.int64)[::2]  # not contiguous
    body = _sent(zero_copy.export(source))
    assert np.frombuffer(Path(body["path"]).read_bytes(), dtype=np.int64).tolist() == [0, 2, 4, 6, 8]

    view = zero_copy.empty(8, "uint8")[2:]  # lives in a region it does not fill
    view[...] = 7
    body = _sent(zero_copy.export(view))
    assert Path(body["path"]).read_bytes() == b"\x07" * 6

    body = _sent(zero_copy.export(bytearray(b"abc")))
    assert body["dtype"] == "uint8" and Path(body["path"]).read_bytes() == b"abc"


def test_tables_and_record_batches_are_written_as_arrow_ipc(region_dir: Path) -> None:
    table = pa.table({"n": list(range(100))})
    for obj in (table, table.to_batches()[0]):
        body = _sent(zero_copy.export(obj))
        assert body["kind"] == "arrow" and body["metadata"] == {"num_rows": 100, "num_columns": 1}
        read = pa.ipc.open_stream(Path(body["path"]).read_bytes()).read_all()
        assert read.equals(table)


def test_regions_never_sent_are_removed_when_collected(region_dir: Path) -> None:
    array = zero_copy.empty(16, "float32")
    handle = zero_copy.export(np.ones(3))
    assert len(list(region_dir.iterdir())) == 2
    del array, handle
    gc.collect()
    assert list(region_dir.iterdir()) == []


def test_without_a_region_directory_export_sends_the_bytes_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(zero_copy.DIR_ENV, "")
    out = zero_copy.empty(3, "int32")
    out[...] = [1, 2, 3]
    body = _sent(zero_copy.export(out))
    assert "path" not in body
    assert np.frombuffer(base64.b64decode(body["inline"]), dtype=np.int32).tolist() == [1, 2, 3]


def test_the_size_limit_and_unshareable_objects_give_clear_errors(
    region_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(zero_copy.MAX_BYTES_ENV, "8")
    with pytest.raises(ValueError, match=r"max_bytes \(8\)"):
        zero_copy.export(np.zeros(3, dtype=np.float64))
    with pytest.raises(TypeError, match="dtype=object"):
        zero_copy.export(np.array([object()]))
    with pytest.raises(TypeError, match="export\\(\\) takes"):
        zero_copy.export(42)
    assert list(region_dir.iterdir()) == []
    assert os.stat(region_dir).st_mode & 0o777 == 0o700
