"""A stand-in for the CUDA runtime library behind Polygraphy's CUDA wrapper: the only GPU part replaced.

Polygraphy reaches the GPU through one object, ``polygraphy.cuda.cuda.G_CUDA`` (a ``Cuda`` whose
``handle`` is ``ctypes.CDLL("libcudart.so")``; polygraphy/cuda/cuda.py, ``Cuda.__init__`` and
``wrapper()``). :func:`install` puts a ``Cuda`` there whose ``handle`` is :class:`StandinCudart`:
the same six entry points Polygraphy calls (cudaStreamCreate/Synchronize/Destroy, cudaMalloc/Free,
cudaMemcpy[Async]) with the same ctypes arguments, backed by host memory. Everything above it runs
for real: ``DeviceArray``, ``Stream``, ``_get_array_on_gpu``, the output allocator, the D2H copies.
"Device pointers" are real addresses of host buffers, so copies move real bytes, and every copy,
free and stream use is checked against the live allocations: a use after free, a copy past an
allocation's end or a leaked buffer is recorded in :data:`VIOLATIONS`, as a CUDA error would be.
"""

from __future__ import annotations

import ctypes
import itertools
from typing import Any

# cudaError_t values (CUDA runtime API, driver_types.h)
_SUCCESS, _INVALID_VALUE, _INVALID_DEVICE_POINTER, _INVALID_HANDLE = 0, 1, 17, 400
_KINDS = {0: "HostToHost", 1: "HostToDevice", 2: "DeviceToHost", 3: "DeviceToDevice", 4: "Default"}

EVENTS: list[tuple[str, dict[str, Any]]] = []  # ("cudaMalloc", {"ptr":..., "nbytes":...}), ...
VIOLATIONS: list[str] = []


def _value(arg: Any) -> int:
    """A ctypes scalar (c_void_p, c_size_t, c_int) or a plain int -> int (c_void_p(0).value is None)."""
    raw = getattr(arg, "value", arg)
    return int(raw or 0)


class StandinCudart:
    """The libcudart entry points Polygraphy 0.47-0.53 calls, on host memory."""

    def __init__(self) -> None:
        self.allocations: dict[int, ctypes.Array] = {}  # device pointer -> its backing buffer
        self.streams: set[int] = set()
        self._stream_ids = itertools.count(0x5000)

    # -- memory ---------------------------------------------------------------------------------
    def find(self, ptr: int, nbytes: int) -> ctypes.Array | None:
        """The live allocation holding [ptr, ptr + nbytes), else None."""
        for base, buf in self.allocations.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return buf
        return None

    def read(self, ptr: int, nbytes: int, what: str) -> bytes:
        """Bytes at a device pointer, for the stand-in engine; a bad pointer is a violation."""
        if self.find(ptr, nbytes) is None:
            VIOLATIONS.append(f"{what}: {nbytes} bytes at {ptr:#x} are not inside a live device allocation")
            return bytes(nbytes)
        return ctypes.string_at(ptr, nbytes)

    def write(self, ptr: int, data: bytes, what: str) -> None:
        if self.find(ptr, len(data)) is None:
            VIOLATIONS.append(f"{what}: {len(data)} bytes at {ptr:#x} are not inside a live device allocation")
            return
        ctypes.memmove(ptr, data, len(data))

    def cudaMalloc(self, devptr: Any, size: Any) -> int:  # noqa: N802 - the CUDA names
        nbytes = _value(size)
        buf = ctypes.create_string_buffer(max(nbytes, 1))
        ptr = ctypes.addressof(buf)
        self.allocations[ptr] = buf
        devptr._obj.value = ptr  # Polygraphy passes ctypes.byref(c_void_p())
        EVENTS.append(("cudaMalloc", {"ptr": ptr, "nbytes": nbytes}))
        return _SUCCESS

    def cudaFree(self, devptr: Any) -> int:  # noqa: N802
        ptr = _value(devptr)
        EVENTS.append(("cudaFree", {"ptr": ptr}))
        if ptr == 0:
            return _SUCCESS  # cudaFree(NULL) is a no-op
        if self.allocations.pop(ptr, None) is None:
            VIOLATIONS.append(f"cudaFree({ptr:#x}): not a live allocation (double free?)")
            return _INVALID_DEVICE_POINTER
        return _SUCCESS

    def _copy(self, name: str, dst: Any, src: Any, count: Any, kind: Any, stream: int | None) -> int:
        d, s, n, k = _value(dst), _value(src), _value(count), _KINDS.get(_value(kind), "?")
        EVENTS.append((name, {"dst": d, "src": s, "nbytes": n, "kind": k, "stream": stream}))
        if stream is not None and stream not in self.streams:
            VIOLATIONS.append(f"{name} on stream {stream:#x}, which is not a live stream")
            return _INVALID_HANDLE
        device_side = {"HostToDevice": [d], "DeviceToHost": [s], "DeviceToDevice": [d, s]}.get(k)
        if device_side is None:
            VIOLATIONS.append(f"{name} with kind {k}: Polygraphy only copies to or from the device")
            return _INVALID_VALUE
        for ptr in device_side:
            if self.find(ptr, n) is None:
                VIOLATIONS.append(f"{name} {k}: {n} bytes at {ptr:#x} are not inside a live device allocation")
                return _INVALID_VALUE
        ctypes.memmove(d, s, n)
        return _SUCCESS

    def cudaMemcpy(self, dst: Any, src: Any, count: Any, kind: Any) -> int:  # noqa: N802
        return self._copy("cudaMemcpy", dst, src, count, kind, None)

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: Any, kind: Any, stream: Any) -> int:  # noqa: N802
        return self._copy("cudaMemcpyAsync", dst, src, count, kind, _value(stream))

    # -- streams --------------------------------------------------------------------------------
    def cudaStreamCreate(self, pstream: Any) -> int:  # noqa: N802
        ptr = next(self._stream_ids)
        self.streams.add(ptr)
        pstream._obj.value = ptr
        EVENTS.append(("cudaStreamCreate", {"stream": ptr}))
        return _SUCCESS

    def _stream_call(self, name: str, stream: Any, destroy: bool = False) -> int:
        ptr = _value(stream)
        EVENTS.append((name, {"stream": ptr}))
        if ptr not in self.streams:
            VIOLATIONS.append(f"{name}({ptr:#x}): not a live stream")
            return _INVALID_HANDLE
        if destroy:
            self.streams.discard(ptr)
        return _SUCCESS

    def cudaStreamSynchronize(self, stream: Any) -> int:  # noqa: N802
        return self._stream_call("cudaStreamSynchronize", stream)

    def cudaStreamDestroy(self, stream: Any) -> int:  # noqa: N802
        return self._stream_call("cudaStreamDestroy", stream, destroy=True)


CUDART: StandinCudart | None = None


def install() -> StandinCudart:
    """Make Polygraphy's global CUDA wrapper use the stand-in (before the first ``cuda.wrapper()``)."""
    global CUDART
    import polygraphy.cuda.cuda as polygraphy_cuda

    CUDART = StandinCudart()
    wrapper = polygraphy_cuda.Cuda.__new__(polygraphy_cuda.Cuda)  # skips the libcudart.so search
    wrapper.handle = CUDART
    polygraphy_cuda.G_CUDA = wrapper
    return CUDART


def leaks(since: int = 0) -> list[str]:
    """Buffers and streams made from ``EVENTS[since]`` on and still alive (after a deactivate: none)."""
    if CUDART is None:
        return []
    made = EVENTS[since:]
    buffers = {a["ptr"] for w, a in made if w == "cudaMalloc"} & set(CUDART.allocations)
    streams = {a["stream"] for w, a in made if w == "cudaStreamCreate"} & CUDART.streams
    return ([f"device buffer {p:#x} ({len(CUDART.allocations[p])} bytes) never freed" for p in sorted(buffers)]
            + [f"CUDA stream {s:#x} never destroyed" for s in sorted(streams)])
