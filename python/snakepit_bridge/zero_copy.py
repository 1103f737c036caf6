"""Zero-copy arrays and tables between Elixir and this worker.

Arguments: a ``%Snakepit.ZeroCopyRef{}`` in a call's arguments arrives as a
ready object over shared memory, never as bytes in the message:

* ``kind: :dlpack`` - a ``numpy.ndarray`` mapped copy-on-write over the
  region (writes stay private to this worker). It has the buffer protocol
  and ``__dlpack__``, so ``numpy.from_dlpack`` and ``torch.from_dlpack``
  take it without copying.
* ``kind: :arrow`` - a ``pyarrow.Table`` read from the mapped IPC stream;
  its buffers point into the region.

Results: return ``export(obj)`` (an ndarray, anything with ``__dlpack__`` or
the buffer protocol, or a ``pyarrow.Table``/``RecordBatch``) anywhere in a
tool's result or stream chunks; Elixir receives a
``%Snakepit.ZeroCopyRef{owner: :python}``. ``export`` copies once into a
new region, unless the array already fills a region made by ``empty()``::

    out = zero_copy.empty((1024, 1024), "float32")
    numpy.matmul(a, b, out=out)
    return {"product": zero_copy.export(out)}   # no copy

After ``export``, the region belongs to Elixir: do not write to the array
again. A region made by ``empty()`` that is never exported is removed when
the array is garbage collected.

Regions live in the directory named by ``SNAKEPIT_ZERO_COPY_DIR``. Where it
is unset or empty (zero copy disabled in Elixir, or a worker that cannot
reach the VM's memory), ``empty()`` returns ordinary memory and ``export``
sends the bytes inline (base64): the same objects arrive, by copying.

NumPy (for ``:dlpack``) and pyarrow (for ``:arrow``) are imported only when
needed; a missing one is an ``ImportError`` naming the package.
"""

from __future__ import annotations

import base64
import mmap
import os
import queue
import re
import secrets
import threading
import weakref
from typing import Any

__all__ = ["MARKER", "ZeroCopyHandle", "empty", "export", "resolve", "region_dir"]

MARKER = "__snakepit_zero_copy__"
MARKER_BYTES = MARKER.encode("ascii")
DIR_ENV = "SNAKEPIT_ZERO_COPY_DIR"
MAX_BYTES_ENV = "SNAKEPIT_ZERO_COPY_MAX_BYTES"

_NAME = re.compile(r"^[0-9a-f]{32}\.(dlpack|arrow)$")


def region_dir() -> str | None:
    """The VM's region directory, or ``None`` when regions cannot be shared."""
    value = os.environ.get(DIR_ENV, "")
    return value if value and os.path.isdir(value) else None


def _max_bytes() -> int | None:
    raw = os.environ.get(MAX_BYTES_ENV, "")
    return int(raw) if raw.isdigit() else None


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - numpy is in the test env
        raise ImportError("zero-copy arrays (:dlpack refs) need numpy: pip install numpy") from exc
    return numpy


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401 - makes pyarrow.ipc available
    except ImportError as exc:  # pragma: no cover - pyarrow is in the test env
        raise ImportError("zero-copy tables (:arrow refs) need pyarrow: pip install pyarrow") from exc
    return pyarrow


# ------------------------------------------------------------------ regions


class _Region(mmap.mmap):
    """A writable shared mapping of a new region file; subclassed so it can
    carry its path and be watched by ``weakref.finalize``."""

    path: str
    address: int
    state: dict[str, bool]


def _unlink_unless_handed_over(path: str, state: dict[str, bool]) -> None:
    if not state.get("handed_over"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _new_file(kind: str, nbytes: int) -> tuple[str, int]:
    """A new region file of ``nbytes`` (> 0) in the region directory: its
    path and an open descriptor (the caller closes it)."""
    directory = region_dir()
    assert directory is not None and nbytes > 0
    limit = _max_bytes()
    if limit is not None and nbytes > limit:
        raise ValueError(f"{nbytes} bytes is more than zero_copy max_bytes ({limit})")
    path = os.path.join(directory, f"{secrets.token_hex(16)}.{kind}")
    return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)


def _new_region(kind: str, nbytes: int) -> _Region:
    """A new region file mapped writable; removed when the mapping is
    collected unless handed over."""
    path, fd = _new_file(kind, nbytes)
    try:
        os.ftruncate(fd, nbytes)
        region = _Region(fd, nbytes)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    region.path = path
    region.state = {"handed_over": False}
    weakref.finalize(region, _unlink_unless_handed_over, path, region.state)
    return region


def _write_region(kind: str, data: Any) -> str:
    """A new region file holding ``data`` (a contiguous buffer), written
    with write calls: on a memory file system that allocates and fills
    pages without a page fault each, about twice as fast as copying
    through a fresh mapping."""
    view = memoryview(data).cast("B")
    path, fd = _new_file(kind, view.nbytes)
    try:
        written = 0
        while written < view.nbytes:
            written += os.pwrite(fd, view[written:], written)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path


# Mappings whose arrays were exported: unmapping a large one takes
# milliseconds, so it happens on a background thread, after the reply.
_retired: queue.SimpleQueue[Any] = queue.SimpleQueue()
_retirer: threading.Thread | None = None
_retirer_lock = threading.Lock()


def _retire(region: _Region) -> None:
    global _retirer
    with _retirer_lock:
        if _retirer is None:
            _retirer = threading.Thread(target=_drain_retired, name="snakepit-zero-copy-unmap", daemon=True)
            _retirer.start()
    _retired.put(region)


def _drain_retired() -> None:
    while True:
        region = _retired.get()
        # Usually the last reference (the array went with the tool's frame):
        # the mapping is unmapped here, with the GIL released. An array the
        # tool kept keeps it mapped.
        del region


def _check_region_path(path: str) -> str:
    directory = region_dir()
    if directory is None:
        raise ValueError(
            "a zero-copy ref names a shared-memory region, but this worker has no region "
            f"directory ({DIR_ENV} is not set)"
        )
    if os.path.dirname(path) != directory or not _NAME.match(os.path.basename(path)):
        raise ValueError(f"a zero-copy ref names {path!r}, which is not a region of this VM")
    return path


# ------------------------------------------------------------------ handles


class ZeroCopyHandle:
    """A region to return from a tool. Serializes (``to_dict``) to the
    marker Elixir turns into a ``%Snakepit.ZeroCopyRef{}``; from then on the
    region is Elixir's. A handle that is never sent removes its region."""

    def __init__(
        self,
        kind: str,
        nbytes: int,
        *,
        path: str | None = None,
        inline: bytes | None = None,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
        metadata: dict[str, Any] | None = None,
        region: _Region | None = None,
    ) -> None:
        self.kind = kind
        self.nbytes = nbytes
        self.path = path
        self.dtype = dtype
        self.shape = shape
        self.metadata = metadata
        self._inline = inline
        self._state = {"handed_over": False}
        self._region = region
        if path is not None:
            if region is not None:
                region.state["handed_over"] = True  # this handle decides now
            weakref.finalize(self, _unlink_unless_handed_over, path, self._state)

    @property
    def copy(self) -> bool:
        """True when the bytes travel inline (no shared region)."""
        return self.path is None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": self.kind,
            "bytes": self.nbytes,
            "device": "cpu",
            "owner": "python",
        }
        if self.dtype is not None:
            body["dtype"] = self.dtype
        if self.shape is not None:
            body["shape"] = list(self.shape)
        if self.metadata is not None:
            body["metadata"] = self.metadata
        if self.path is not None:
            body["path"] = self.path
            self._state["handed_over"] = True
            if self._region is not None:
                _retire(self._region)
                self._region = None
        else:
            body["inline"] = base64.b64encode(self._inline or b"").decode("ascii")
        return {MARKER: body}

    def __repr__(self) -> str:
        where = "inline" if self.path is None else os.path.basename(self.path)
        return f"<ZeroCopyHandle {self.kind} {self.nbytes} bytes {where}>"


def empty(shape: int | tuple[int, ...] | list[int], dtype: Any = "float32") -> Any:
    """An uninitialized C-contiguous ndarray in a new shared-memory region;
    ``export`` of the whole array sends it without copying."""
    np = _numpy()
    dt = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    if nbytes == 0 or region_dir() is None:
        return np.empty(dims, dtype=dt)
    region = _new_region("dlpack", nbytes)
    array = np.frombuffer(region, dtype=dt).reshape(dims)
    region.address = array.ctypes.data
    return array


def _region_of(array: Any) -> _Region | None:
    """The region ``array`` exactly fills, if any."""
    base = array
    while base is not None and not isinstance(base, _Region):
        base = getattr(base, "base", None)
        if isinstance(base, memoryview):
            base = base.obj
    if base is None or base.closed:
        return None
    whole = (
        array.flags.c_contiguous
        and array.ctypes.data == base.address
        and array.nbytes == len(base)
    )
    return base if whole else None


def _as_array(obj: Any) -> Any:
    np = _numpy()
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack__"):
        try:
            return np.from_dlpack(obj)
        except (BufferError, RuntimeError, TypeError):
            pass  # e.g. a GPU tensor, or a read-only one: try the buffer protocol
    try:
        return np.asarray(memoryview(obj))
    except TypeError as exc:
        raise TypeError(
            f"export() takes an ndarray, an object with __dlpack__ or the buffer protocol, or a "
            f"pyarrow Table/RecordBatch; got {type(obj).__name__}"
        ) from exc


def _export_array(obj: Any) -> ZeroCopyHandle:
    np = _numpy()
    array = _as_array(obj)
    if array.dtype.hasobject:
        raise TypeError("export() cannot share an array of Python objects (dtype=object)")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    dtype, shape, nbytes = array.dtype.name, tuple(int(d) for d in array.shape), int(array.nbytes)
    region = _region_of(array)
    if region is not None:
        return ZeroCopyHandle("dlpack", nbytes, path=region.path, dtype=dtype, shape=shape, region=region)
    contiguous = np.ascontiguousarray(array)
    if nbytes == 0 or region_dir() is None:
        return ZeroCopyHandle("dlpack", nbytes, inline=contiguous.tobytes(), dtype=dtype, shape=shape)
    path = _write_region("dlpack", contiguous)
    return ZeroCopyHandle("dlpack", nbytes, path=path, dtype=dtype, shape=shape)


def _export_arrow(obj: Any, pa: Any) -> ZeroCopyHandle:
    table = obj if isinstance(obj, pa.Table) else pa.Table.from_batches([obj])
    metadata = {"num_rows": table.num_rows, "num_columns": table.num_columns}

    def write(sink: Any) -> None:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)

    sizer = pa.MockOutputStream()
    write(sizer)
    nbytes = sizer.size()
    if region_dir() is None:
        out = pa.BufferOutputStream()
        write(out)
        return ZeroCopyHandle("arrow", nbytes, inline=out.getvalue().to_pybytes(), metadata=metadata)
    path, fd = _new_file("arrow", nbytes)
    os.close(fd)
    try:
        with pa.OSFile(path, "wb") as sink:
            write(sink)
    except BaseException:
        os.unlink(path)
        raise
    return ZeroCopyHandle("arrow", nbytes, path=path, metadata=metadata)


def export(obj: Any) -> ZeroCopyHandle:
    """A handle for ``obj`` to return from a tool (see the module doc)."""
    if isinstance(obj, ZeroCopyHandle):
        return obj
    module = type(obj).__module__ or ""
    if module.startswith("pyarrow"):
        pa = _pyarrow()
        if isinstance(obj, (pa.Table, pa.RecordBatch)):
            return _export_arrow(obj, pa)
    return _export_array(obj)


# ------------------------------------------------------------------ arguments


def _mapped_bytes(body: dict[str, Any], access: int) -> Any:
    """The region's bytes: a mapping of its file, or the inline data."""
    nbytes = int(body.get("bytes", 0))
    if "inline" in body:
        data = bytearray(base64.b64decode(body["inline"]))
        if len(data) != nbytes:
            raise ValueError(f"a zero-copy ref says {nbytes} bytes but holds {len(data)}")
        return data
    path = _check_region_path(str(body.get("path", "")))
    if nbytes == 0:
        return bytearray()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise ValueError(
            "a zero-copy ref's region is gone: it was closed (or its owner released it) "
            "before the worker mapped it"
        ) from exc
    try:
        return mmap.mmap(fd, nbytes, access=access)
    finally:
        os.close(fd)


def _import(body: dict[str, Any]) -> Any:
    kind = body.get("kind")
    if body.get("device", "cpu") != "cpu":
        raise ValueError(f"zero-copy refs on device {body.get('device')!r} are not supported")
    if kind == "dlpack":
        np = _numpy()
        dtype = np.dtype(str(body.get("dtype", "uint8")))
        shape = tuple(int(d) for d in body.get("shape") or [int(body.get("bytes", 0)) // dtype.itemsize])
        data = _mapped_bytes(body, mmap.ACCESS_COPY)
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if kind == "arrow":
        pa = _pyarrow()
        data = _mapped_bytes(body, mmap.ACCESS_READ)
        buffer = pa.py_buffer(data)
        if buffer.size >= 6 and buffer[:6].to_pybytes() == b"ARROW1":
            return pa.ipc.open_file(buffer).read_all()
        return pa.ipc.open_stream(buffer).read_all()
    raise ValueError(f"unknown zero-copy ref kind {kind!r}")


def resolve(value: Any) -> Any:
    """``value`` with every zero-copy marker replaced by its object."""
    if isinstance(value, dict):
        if len(value) == 1 and MARKER in value and isinstance(value[MARKER], dict):
            return _import(value[MARKER])
        return {key: resolve(item) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item) for item in value]
    return value
