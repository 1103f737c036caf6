"""snakepit_bridge.zero_copy on its own: markers in, handles out, memory
files made, sealed, handed over and released. Here this test process plays
the VM (its pid is the VM pid the worker trusts); the Elixir suite runs the
same paths against the real native core."""

from __future__ import annotations

import base64
import fcntl
import gc
import os
from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest

from snakepit_bridge import serialization, zero_copy


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(zero_copy.ENABLED_ENV, "memfd")
    monkeypatch.setenv(zero_copy.VM_PID_ENV, str(os.getpid()))
    monkeypatch.setenv(zero_copy.INLINE_BELOW_ENV, "0")
    monkeypatch.delenv(zero_copy.MAX_BYTES_ENV, raising=False)
    yield


def _vm_region(data: bytes, seals: int = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) -> tuple[int, dict]:
    """A memory file as the VM makes one: its descriptor and marker body."""
    fd = os.memfd_create("test-region", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.pwrite(fd, data, 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    body = {"path": f"/proc/{os.getpid()}/fd/{fd}", "ino": os.fstat(fd).st_ino, "bytes": len(data)}
    return fd, body


def _marker(**body: object) -> dict:
    return {zero_copy.MARKER: {"device": "cpu", "owner": "elixir", **body}}


def _sent(handle: zero_copy.ZeroCopyHandle) -> dict:
    """The marker as it goes on the wire, through the real serializer."""
    return serialization.loads(serialization.dumps({"h": handle}))["h"][zero_copy.MARKER]


def _read(body: dict) -> bytes:
    """What the VM reads of a marker this worker sent."""
    with open(body["path"], "rb") as f:
        assert os.fstat(f.fileno()).st_ino == body["ino"]
        return f.read()


def _seals(body: dict) -> int:
    fd = os.open(body["path"], os.O_RDONLY)
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    finally:
        os.close(fd)


def test_a_dlpack_marker_becomes_a_private_writable_array_over_the_region(shared: None) -> None:
    data = np.arange(12, dtype=np.float32).tobytes()
    fd, body = _vm_region(data)
    args = {"x": [_marker(kind="dlpack", dtype="float32", shape=[3, 4], **body)]}

    array = zero_copy.resolve(args)["x"][0]

    assert array.dtype == np.float32 and array.shape == (3, 4)
    assert array.sum() == 66.0
    assert np.from_dlpack(array).shape == (3, 4)
    assert memoryview(array).nbytes == 48
    array[0, 0] = 100.0  # copy-on-write: the shared memory is untouched
    assert os.pread(fd, 48, 0) == data
    os.close(fd)


def test_an_inline_marker_works_without_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(zero_copy.ENABLED_ENV, "")
    raw = np.array([1, 2, 3], dtype=np.int16).tobytes()
    marker = _marker(kind="dlpack", inline=base64.b64encode(raw).decode(), bytes=6, dtype="int16", shape=[3])
    assert zero_copy.resolve(marker).tolist() == [1, 2, 3]


def test_an_arrow_marker_becomes_a_table_over_the_mapping(shared: None) -> None:
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    fd, body = _vm_region(sink.getvalue().to_pybytes())

    seen = zero_copy.resolve(_marker(kind="arrow", **body))

    assert isinstance(seen, pa.Table) and seen.equals(table)
    os.close(fd)


def test_markers_naming_other_files_unsealed_or_gone_regions_are_refused(
    shared: None, tmp_path: object
) -> None:
    with pytest.raises(ValueError, match="not a region of this VM"):
        zero_copy.resolve(_marker(kind="dlpack", path="/etc/passwd", bytes=4, dtype="uint8"))
    with pytest.raises(ValueError, match="not a region of this VM"):
        zero_copy.resolve(_marker(kind="dlpack", path="/proc/1/fd/3", bytes=4, dtype="uint8"))
    fd, body = _vm_region(b"\0" * 4, seals=0)
    with pytest.raises(ValueError, match="not sealed"):
        zero_copy.resolve(_marker(kind="dlpack", dtype="uint8", **body))
    os.close(fd)
    fd, body = _vm_region(b"\0" * 4)
    with pytest.raises(ValueError, match="region is gone"):
        zero_copy.resolve(_marker(kind="dlpack", dtype="uint8", **{**body, "ino": body["ino"] + 1}))
    with pytest.raises(ValueError, match="holds 4"):
        zero_copy.resolve(_marker(kind="dlpack", dtype="uint8", **{**body, "bytes": 8}))
    os.close(fd)
    with pytest.raises(ValueError, match="region is gone"):
        zero_copy.resolve(_marker(kind="dlpack", dtype="uint8", **body))
    with pytest.raises(ValueError, match="device"):
        zero_copy.resolve(_marker(kind="dlpack", device="cuda", inline="", bytes=0))


def test_an_array_made_by_empty_is_exported_without_a_copy_and_sealed(shared: None) -> None:
    out = zero_copy.empty((4, 5), "float64")
    out[...] = 2.5

    body = _sent(zero_copy.export(out))

    assert body["dtype"] == "float64" and body["shape"] == [4, 5] and body["bytes"] == 160
    assert np.frombuffer(_read(body), dtype=np.float64).tolist() == [2.5] * 20
    seals = _seals(body)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
    fd = int(body["path"].rsplit("/", 1)[1])
    with pytest.raises(OSError):
        os.ftruncate(fd, 0)  # nobody can shrink it now, not even its maker
    del out
    gc.collect()
    assert _read(body)[:8] == np.float64(2.5).tobytes(), "a sent region stays until the VM takes it"


def test_other_arrays_and_buffers_are_copied_once_into_a_sealed_region(shared: None) -> None:
    source = np.arange(10, dtype=np.int64)[::2]  # not contiguous
    body = _sent(zero_copy.export(source))
    assert np.frombuffer(_read(body), dtype=np.int64).tolist() == [0, 2, 4, 6, 8]
    assert _seals(body) & fcntl.F_SEAL_WRITE

    view = zero_copy.empty(8, "uint8")[2:]  # lives in a region it does not fill
    view[...] = 7
    body = _sent(zero_copy.export(view))
    assert _read(body) == b"\x07" * 6

    body = _sent(zero_copy.export(bytearray(b"abc")))
    assert body["dtype"] == "uint8" and _read(body) == b"abc"


def test_tables_and_record_batches_are_written_as_arrow_ipc(shared: None) -> None:
    table = pa.table({"n": list(range(100))})
    for obj in (table, table.to_batches()[0]):
        body = _sent(zero_copy.export(obj))
        assert body["kind"] == "arrow" and body["metadata"] == {"num_rows": 100, "num_columns": 1}
        assert _seals(body) & fcntl.F_SEAL_WRITE
        read = pa.ipc.open_stream(_read(body)).read_all()
        assert read.equals(table)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_regions_never_sent_are_released_when_collected(shared: None) -> None:
    gc.collect()
    before = _open_fds()
    array = zero_copy.empty(16, "float32")
    handle = zero_copy.export(np.ones(3))
    assert _open_fds() > before
    del array, handle
    gc.collect()
    assert _open_fds() == before


def test_a_sent_region_is_kept_until_the_vm_seals_its_receipt(shared: None) -> None:
    zero_copy._sweep_handed_over()
    waiting = zero_copy.pending_handovers()
    body = _sent(zero_copy.export(np.ones(4)))
    assert zero_copy.pending_handovers() == waiting + 1
    # The VM's receipt: it adds F_SEAL_SEAL through its own descriptor.
    vm_fd = os.open(body["path"], os.O_RDWR)
    fcntl.fcntl(vm_fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL)
    assert zero_copy.pending_handovers() == waiting
    # The VM's descriptor still reads it after the worker closed its own.
    assert np.frombuffer(os.pread(vm_fd, 32, 0)).tolist() == [1.0] * 4
    os.close(vm_fd)


def test_without_shared_memory_or_below_the_threshold_export_sends_the_bytes_inline(
    shared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(zero_copy.INLINE_BELOW_ENV, "1024")
    body = _sent(zero_copy.export(np.arange(3, dtype=np.int32)))
    assert "path" not in body and np.frombuffer(base64.b64decode(body["inline"]), dtype=np.int32).tolist() == [0, 1, 2]
    monkeypatch.setenv(zero_copy.INLINE_BELOW_ENV, "0")
    monkeypatch.setenv(zero_copy.ENABLED_ENV, "")
    out = zero_copy.empty(3, "int32")
    out[...] = [1, 2, 3]
    body = _sent(zero_copy.export(out))
    assert "path" not in body
    assert np.frombuffer(base64.b64decode(body["inline"]), dtype=np.int32).tolist() == [1, 2, 3]


def test_the_size_limit_and_unshareable_objects_give_clear_errors(
    shared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(zero_copy.MAX_BYTES_ENV, "8")
    gc.collect()
    before = _open_fds()
    with pytest.raises(ValueError, match=r"max_bytes \(8\)"):
        zero_copy.export(np.zeros(3, dtype=np.float64))
    with pytest.raises(TypeError, match="dtype=object"):
        zero_copy.export(np.array([object()]))
    with pytest.raises(TypeError, match="export\\(\\) takes"):
        zero_copy.export(42)
    gc.collect()
    assert _open_fds() == before
