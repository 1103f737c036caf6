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

Regions are anonymous memory files (``memfd``) sealed against shrinking
and growing before anyone else maps them, so neither side can pull memory
from under the other. The other process opens one through
``/proc/<pid>/fd/<n>`` of the process that holds it; the marker carries that
path and the file's inode number. A region this worker exports is kept open
until the VM has taken it over (the VM adds ``F_SEAL_SEAL`` as its
receipt), or for ``HANDOVER_TTL`` seconds at most.

Where ``SNAKEPIT_ZERO_COPY`` is not ``memfd`` (zero copy disabled in Elixir,
or a worker that cannot reach the VM's memory), and for payloads smaller
than ``SNAKEPIT_ZERO_COPY_INLINE_BELOW`` bytes, ``empty()`` returns
ordinary memory and ``export`` sends the bytes inline (base64): the same
objects arrive, by copying.

NumPy (for ``:dlpack``) and pyarrow (for ``:arrow``) are imported only when
needed; a missing one is an ``ImportError`` naming the package.
"""

from __future__ import annotations

import base64
import collections
import fcntl
import mmap
import os
import queue
import re
import stat
import threading
import time
import weakref
from typing import Any

__all__ = ["MARKER", "ZeroCopyHandle", "empty", "enabled", "export", "resolve"]

MARKER = "__snakepit_zero_copy__"
MARKER_BYTES = MARKER.encode("ascii")
ENABLED_ENV = "SNAKEPIT_ZERO_COPY"
VM_PID_ENV = "SNAKEPIT_ZERO_COPY_VM_PID"
INLINE_BELOW_ENV = "SNAKEPIT_ZERO_COPY_INLINE_BELOW"
MAX_BYTES_ENV = "SNAKEPIT_ZERO_COPY_MAX_BYTES"

# How long an exported region stays open without the VM's receipt.
HANDOVER_TTL = 300.0

_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_PROC_PATH = re.compile(r"^/proc/([0-9]{1,10})/fd/([0-9]{1,10})$")


def enabled() -> bool:
    """Whether regions can be shared with the VM (else they are copied)."""
    return os.environ.get(ENABLED_ENV, "") == "memfd" and hasattr(os, "memfd_create")


def _inline_below() -> int:
    raw = os.environ.get(INLINE_BELOW_ENV, "")
    return int(raw) if raw.isdigit() else 0


def _shares(nbytes: int) -> bool:
    return nbytes > 0 and nbytes >= _inline_below() and enabled()


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
    """A writable shared mapping of a new memory file; subclassed so it can
    carry its descriptor and be watched by ``weakref.finalize``."""

    fd: int
    address: int
    state: dict[str, bool]


def _close_unless_handed_over(fd: int, state: dict[str, bool]) -> None:
    if not state.get("handed_over"):
        try:
            os.close(fd)
        except OSError:
            pass


def _check_size(nbytes: int) -> None:
    limit = _max_bytes()
    if limit is not None and nbytes > limit:
        raise ValueError(f"{nbytes} bytes is more than zero_copy max_bytes ({limit})")


def _new_memfd(kind: str, nbytes: int) -> int:
    """A new, empty, sealable memory file for ``nbytes`` (> 0)."""
    _check_size(nbytes)
    return os.memfd_create(f"snakepit-{kind}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def _new_region(kind: str, nbytes: int) -> _Region:
    """A new memory file of ``nbytes`` mapped writable; closed when the
    mapping is collected unless handed over."""
    fd = _new_memfd(kind, nbytes)
    try:
        os.ftruncate(fd, nbytes)
        region = _Region(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise
    region.fd = fd
    region.state = {"handed_over": False}
    weakref.finalize(region, _close_unless_handed_over, fd, region.state)
    return region


def _write_region(kind: str, data: Any) -> int:
    """A new memory file holding ``data`` (a contiguous buffer), written
    with write calls (no page fault per page, as through a fresh mapping)
    and sealed against any change: its descriptor."""
    view = memoryview(data).cast("B")
    fd = _new_memfd(kind, view.nbytes)
    try:
        written = 0
        while written < view.nbytes:
            written += os.pwrite(fd, view[written:], written)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


# Descriptors of exported regions, kept until the VM took them over.
_handed_over: collections.deque[tuple[int, float]] = collections.deque()
_handed_over_lock = threading.Lock()


def _hand_over(fd: int) -> None:
    with _handed_over_lock:
        _handed_over.append((fd, time.monotonic()))
    _sweep_handed_over()


def _sweep_handed_over() -> None:
    """Closes the exported descriptors the VM has taken over (its receipt is
    the ``F_SEAL_SEAL`` seal) or that waited longer than ``HANDOVER_TTL``."""
    now = time.monotonic()
    with _handed_over_lock:
        keep: list[tuple[int, float]] = []
        while _handed_over:
            fd, since = _handed_over.popleft()
            try:
                taken = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SEAL
            except OSError:
                taken = True
            if taken or now - since > HANDOVER_TTL:
                try:
                    os.close(fd)
                except OSError:
                    pass
            else:
                keep.append((fd, since))
        _handed_over.extend(keep)


def pending_handovers() -> int:
    """How many exported regions wait for the VM to take them over."""
    _sweep_handed_over()
    with _handed_over_lock:
        return len(_handed_over)


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


def _open_vm_region(body: dict[str, Any], nbytes: int) -> int:
    """A descriptor of the VM's region the marker names: only the VM's own
    memory files, of the stated inode and size, sealed against resizing."""
    if not enabled():
        raise ValueError(
            "a zero-copy ref names a shared-memory region, but this worker cannot share memory "
            f"with the VM ({ENABLED_ENV} is not memfd)"
        )
    path = str(body.get("path", ""))
    match = _PROC_PATH.match(path)
    if match is None or match.group(1) != os.environ.get(VM_PID_ENV, ""):
        raise ValueError(f"a zero-copy ref names {path!r}, which is not a region of this VM")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ValueError(
            "a zero-copy ref's region is gone: it was closed (or its owner released it) "
            "before the worker mapped it"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_ino != body.get("ino"):
            raise ValueError(
                "a zero-copy ref's region is gone: it was closed before the worker mapped it "
                "(its descriptor now names another file)"
            )
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0
        if seals & _SIZE_SEALS != _SIZE_SEALS:
            raise ValueError("a zero-copy ref names memory that is not sealed against resizing")
        if info.st_size != nbytes:
            raise ValueError(f"a zero-copy ref says {nbytes} bytes but its region holds {info.st_size}")
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------ handles


class ZeroCopyHandle:
    """A region to return from a tool. Serializes (``to_dict``) to the
    marker Elixir turns into a ``%Snakepit.ZeroCopyRef{}``; from then on the
    region is Elixir's. A handle that is never sent releases its region."""

    def __init__(
        self,
        kind: str,
        nbytes: int,
        *,
        fd: int | None = None,
        inline: bytes | None = None,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
        metadata: dict[str, Any] | None = None,
        region: _Region | None = None,
    ) -> None:
        self.kind = kind
        self.nbytes = nbytes
        self.fd = fd
        self.dtype = dtype
        self.shape = shape
        self.metadata = metadata
        self._inline = inline
        self._state = {"handed_over": False}
        self._region = region
        if fd is not None:
            # Sealed before anyone else can map it: its size never changes.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS)
            if region is not None:
                region.state["handed_over"] = True  # this handle decides now
            weakref.finalize(self, _close_unless_handed_over, fd, self._state)

    @property
    def copy(self) -> bool:
        """True when the bytes travel inline (no shared region)."""
        return self.fd is None

    @property
    def path(self) -> str | None:
        """Where the VM opens the region (``None`` when it travels inline)."""
        return None if self.fd is None else f"/proc/{os.getpid()}/fd/{self.fd}"

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
        if self.fd is not None:
            body["path"] = self.path
            body["ino"] = os.fstat(self.fd).st_ino
            if not self._state["handed_over"]:
                self._state["handed_over"] = True
                _hand_over(self.fd)
            if self._region is not None:
                _retire(self._region)
                self._region = None
        else:
            body["inline"] = base64.b64encode(self._inline or b"").decode("ascii")
        return {MARKER: body}

    def __repr__(self) -> str:
        where = "inline" if self.fd is None else f"memfd {self.fd}"
        return f"<ZeroCopyHandle {self.kind} {self.nbytes} bytes {where}>"


def empty(shape: int | tuple[int, ...] | list[int], dtype: Any = "float32") -> Any:
    """An uninitialized C-contiguous ndarray in a new shared-memory region;
    ``export`` of the whole array sends it without copying."""
    np = _numpy()
    dt = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    if not _shares(nbytes):
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
    _check_size(nbytes)
    region = _region_of(array)
    if region is not None:
        return ZeroCopyHandle("dlpack", nbytes, fd=region.fd, dtype=dtype, shape=shape, region=region)
    contiguous = np.ascontiguousarray(array)
    if not _shares(nbytes):
        return ZeroCopyHandle("dlpack", nbytes, inline=contiguous.tobytes(), dtype=dtype, shape=shape)
    fd = _write_region("dlpack", contiguous)
    return ZeroCopyHandle("dlpack", nbytes, fd=fd, dtype=dtype, shape=shape)


def _export_arrow(obj: Any, pa: Any) -> ZeroCopyHandle:
    table = obj if isinstance(obj, pa.Table) else pa.Table.from_batches([obj])
    metadata = {"num_rows": table.num_rows, "num_columns": table.num_columns}

    def write(sink: Any) -> None:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)

    sizer = pa.MockOutputStream()
    write(sizer)
    nbytes = sizer.size()
    _check_size(nbytes)
    if not _shares(nbytes):
        out = pa.BufferOutputStream()
        write(out)
        return ZeroCopyHandle("arrow", nbytes, inline=out.getvalue().to_pybytes(), metadata=metadata)
    # Written straight into the memory file through a writable mapping,
    # unmapped before the file is sealed against writes.
    fd = _new_memfd("arrow", nbytes)
    try:
        os.ftruncate(fd, nbytes)
        with mmap.mmap(fd, nbytes) as target:
            write(pa.FixedSizeBufferWriter(pa.py_buffer(target)))
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return ZeroCopyHandle("arrow", nbytes, fd=fd, metadata=metadata)


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
    if nbytes == 0:
        return bytearray()
    fd = _open_vm_region(body, nbytes)
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
    if _handed_over:
        _sweep_handed_over()
    return _resolve(value)


def _resolve(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and MARKER in value and isinstance(value[MARKER], dict):
            return _import(value[MARKER])
        return {key: _resolve(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item) for item in value]
    return value
