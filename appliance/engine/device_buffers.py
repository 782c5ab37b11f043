"""Tensors that ONNX Runtime allocates on a session's device, and every copy the engine makes.

The runner never touches device memory itself. It asks a Device for a DeviceBuffer (allocated by
ORT's own allocator, so the memory lives where the session computes), binds row ranges of it to
the graph by pointer and shape, and moves bytes only through `write`, `write_at`, `read`,
`copy_block`, `copy_between` (`copy_all` for many at once) and `clear`. Offsets and sizes count
elements of the buffer's dtype, from its start. Each call adds its bytes to `traffic`, per
direction and buffer name: that is how a test shows what a decode step moves between host and
device.

CpuDevice: the memory is host memory, so reads are views and copies are numpy's.
CudaDevice: the CUDA runtime's own copies (cudaMemcpy, cudaMemcpy2D, cudaMemset) through ctypes,
from the library onnxruntime-gpu loads; no torch or cupy in the daemon.
"""

from __future__ import annotations

import ctypes
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import onnxruntime as ort

TO_DEVICE = "host->device"
TO_HOST = "device->host"
ON_DEVICE = "device->device"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class DeviceBuffer:
    """One ORT-allocated tensor [rows, *row_shape]; rows a..b are one contiguous range."""

    def __init__(self, device: "CpuDevice", name: str, shape: tuple[int, ...], dtype):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.size = math.prod(self.shape)
        self.row_size = math.prod(self.shape[1:])  # elements per row
        self.value = ort.OrtValue.ortvalue_from_shape_and_type(list(self.shape), self.dtype.type,
                                                               device.ort_device, device.device_id)
        self.ptr = self.value.data_ptr()
        self.host: Optional[np.ndarray] = None  # a flat view, where the host can address the memory
        self.staging: Optional[np.ndarray] = None  # where reads land, where it cannot

    def address(self, offset: int) -> int:
        return self.ptr + offset * self.dtype.itemsize


class CpuDevice:
    """Device memory that is host memory: ORT's CPU allocator, read and written as numpy views."""

    ort_device = "cpu"
    device_id = 0
    # A batch of copies moving more elements than this is split over the copy threads.
    PARALLEL_COPY_ELEMENTS = 1 << 20

    def __init__(self, copy_threads: int = 1):
        self.traffic: Counter[tuple[str, str]] = Counter()  # (direction, buffer name) -> bytes
        self.bound: Counter[str] = Counter()  # graph input or output name -> times bound
        # numpy releases the GIL while it copies, so a second thread halves a prefix-cache hit's
        # copy into its row (9 ms for 1,000 positions of the SmolLM-135M shape on this machine's
        # CPU, where one core does not saturate memory bandwidth). The copies run between session
        # runs, when ORT's threads are idle.
        self._copy_pool = ThreadPoolExecutor(copy_threads - 1, "device-copy") if copy_threads > 1 else None
        self._copy_threads = copy_threads

    def allocate(self, name: str, shape: tuple[int, ...], dtype) -> DeviceBuffer:
        buffer = DeviceBuffer(self, name, shape, dtype)
        raw = (ctypes.c_byte * (buffer.size * buffer.dtype.itemsize)).from_address(buffer.ptr)
        buffer.host = np.frombuffer(raw, buffer.dtype)  # lives as long as the buffer's OrtValue
        return buffer

    def bind(self, binding: ort.IOBinding, name: str, buffer: DeviceBuffer, first_row: int,
             shape: tuple[int, ...], output: bool = False) -> None:
        """Binds rows first_row.. of buffer, seen as `shape`, as the graph's input or output `name`."""
        assert first_row * buffer.row_size + math.prod(shape) <= buffer.size, f"{name} outruns {buffer.name}"
        bind = binding.bind_output if output else binding.bind_input
        bind(name, self.ort_device, self.device_id, buffer.dtype.type, list(shape),
             buffer.address(first_row * buffer.row_size))
        self.bound[name] += 1

    def _count(self, direction: str, buffer: DeviceBuffer, elements: int) -> None:
        self.traffic[direction, buffer.name] += elements * buffer.dtype.itemsize

    def write(self, buffer: DeviceBuffer, offset: int, values: np.ndarray) -> None:
        """Host values into buffer[offset : offset + values.size]."""
        self._count(TO_DEVICE, buffer, values.size)
        buffer.host[offset : offset + values.size] = values.ravel()

    def write_at(self, buffer: DeviceBuffer, offsets: np.ndarray, value: int) -> None:
        """One value into each of the scattered elements buffer[offsets]."""
        self._count(TO_DEVICE, buffer, len(offsets))
        buffer.host[offsets] = value

    def read(self, buffer: DeviceBuffer, offset: int, count: int) -> np.ndarray:
        """buffer[offset : offset + count] on the host, flat; valid until the buffer is next written."""
        self._count(TO_HOST, buffer, count)
        return buffer.host[offset : offset + count]

    def copy_block(self, buffer: DeviceBuffer, src: int, dst: int, width: int, height: int, pitch: int) -> None:
        """Copies `height` runs of `width` elements, `pitch` apart, from offset src to offset dst."""
        self.copy_between(buffer, src, pitch, buffer, dst, pitch, width, height)

    def copy_between(self, src: DeviceBuffer, src_offset: int, src_pitch: int, dst: DeviceBuffer,
                     dst_offset: int, dst_pitch: int, width: int, height: int) -> None:
        """Copies `height` runs of `width` elements from src (runs src_pitch apart) to dst (runs
        dst_pitch apart), both on the device: a prefix-cache block to or from a KV row."""
        self._count(ON_DEVICE, dst, width * height)
        self._copy(src, src_offset, src_pitch, dst, dst_offset, dst_pitch, width, height)

    def _copy(self, src: DeviceBuffer, src_offset: int, src_pitch: int, dst: DeviceBuffer,
              dst_offset: int, dst_pitch: int, width: int, height: int) -> None:
        # Strided views made by the ndarray constructor: a fifth of as_strided's cost, which counted
        # where a store copies a few blocks of each of 60 layers' K and V (and it checks the bounds).
        shape, size, dtype = (height, width), src.dtype.itemsize, src.dtype
        np.copyto(np.ndarray(shape, dtype, dst.host, dst_offset * size, (dst_pitch * size, size)),
                  np.ndarray(shape, dtype, src.host, src_offset * size, (src_pitch * size, size)))

    def copy_all(self, copies: list[tuple]) -> None:
        """Runs copy_between(*args) for each args in `copies` (disjoint destinations), a large
        batch split over the copy threads."""
        elements = 0
        for args in copies:  # counted here: a Counter is not safe to update from several threads
            self._count(ON_DEVICE, args[3], args[-1] * args[-2])
            elements += args[-1] * args[-2]
        if self._copy_pool is None or elements < self.PARALLEL_COPY_ELEMENTS:
            self._copy_share(copies)
            return
        shares = [copies[i::self._copy_threads] for i in range(self._copy_threads)]
        others = [self._copy_pool.submit(self._copy_share, share) for share in shares[1:]]
        try:
            self._copy_share(shares[0])
        finally:  # even where this share failed, no copy may still be running when the caller goes on
            for other in others:
                other.result()

    def _copy_share(self, copies: list[tuple]) -> None:
        for args in copies:
            self._copy(*args)

    def clear(self, buffer: DeviceBuffer, offset: int, count: int) -> None:
        """Zeroes buffer[offset : offset + count] where it lies (no host data is sent)."""
        self._count(ON_DEVICE, buffer, count)
        buffer.host[offset : offset + count] = 0

    def before_run(self) -> None:
        """Makes every write so far visible to the next session run."""


class CudaDevice(CpuDevice):
    """Memory on CUDA device `device_id`, copied by the CUDA runtime (unified addressing lets one
    copy kind, cudaMemcpyDefault, serve every direction)."""

    ort_device = "cuda"
    _DEFAULT_KIND = 4  # cudaMemcpyDefault

    def __init__(self, device_id: int = 0, cuda: Optional[ctypes.CDLL] = None):
        super().__init__()
        self.device_id = device_id
        self._cuda = cuda or _cudart()  # cuda: a stand-in with the same calls, for tests
        self._check("cudaSetDevice", self._cuda.cudaSetDevice(device_id))
        self._written = False

    def _run(self, call: str, *args) -> None:
        # The current device belongs to the calling host thread, and the engine's thread is not the
        # one that made this Device: set it before every call, so a copy for device 1 is never
        # issued on device 0's context (and the synchronize waits for this device).
        self._check("cudaSetDevice", self._cuda.cudaSetDevice(self.device_id))
        self._check(call, getattr(self._cuda, call)(*args))

    def _check(self, call: str, code: int) -> None:
        if code:
            message = self._cuda.cudaGetErrorString(code).decode(errors="replace")
            raise RuntimeError(f"{call} failed on CUDA device {self.device_id}: {message}")

    def allocate(self, name: str, shape: tuple[int, ...], dtype) -> DeviceBuffer:
        return DeviceBuffer(self, name, shape, dtype)

    def write(self, buffer: DeviceBuffer, offset: int, values: np.ndarray) -> None:
        self._count(TO_DEVICE, buffer, values.size)
        host = np.ascontiguousarray(values, buffer.dtype)
        self._run("cudaMemcpy", ctypes.c_void_p(buffer.address(offset)), ctypes.c_void_p(host.ctypes.data),
                  host.nbytes, self._DEFAULT_KIND)
        self._written = True

    def write_at(self, buffer: DeviceBuffer, offsets: np.ndarray, value: int) -> None:
        one = np.full(1, value, buffer.dtype)
        for offset in offsets:  # a handful per step: one mask entry per row
            self.write(buffer, int(offset), one)

    def read(self, buffer: DeviceBuffer, offset: int, count: int) -> np.ndarray:
        self._count(TO_HOST, buffer, count)
        staging = buffer.staging
        if staging is None or staging.size < count:  # grows to the largest read, then is reused
            staging = buffer.staging = np.empty(count, buffer.dtype)
        self._run("cudaMemcpy", ctypes.c_void_p(staging.ctypes.data), ctypes.c_void_p(buffer.address(offset)),
                  count * buffer.dtype.itemsize, self._DEFAULT_KIND)
        return staging[:count]

    def _copy(self, src: DeviceBuffer, src_offset: int, src_pitch: int, dst: DeviceBuffer,
              dst_offset: int, dst_pitch: int, width: int, height: int) -> None:
        size = src.dtype.itemsize
        self._run("cudaMemcpy2D", ctypes.c_void_p(dst.address(dst_offset)), dst_pitch * size,
                  ctypes.c_void_p(src.address(src_offset)), src_pitch * size, width * size, height,
                  self._DEFAULT_KIND)
        self._written = True

    def clear(self, buffer: DeviceBuffer, offset: int, count: int) -> None:
        self._count(ON_DEVICE, buffer, count)
        self._run("cudaMemset", ctypes.c_void_p(buffer.address(offset)), 0, count * buffer.dtype.itemsize)
        self._written = True

    def before_run(self) -> None:
        # A copy from pageable memory may return before its DMA lands, and ORT computes on its own
        # stream: wait for the copies so the run reads what was written.
        if self._written:
            self._run("cudaDeviceSynchronize")
            self._written = False


_CUDART_NAMES = ("libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so", "cudart64_12.dll")


def _cudart() -> ctypes.CDLL:
    """The CUDA runtime that onnxruntime-gpu's CUDA provider has loaded: a session on CUDA exists by
    now, and loading a library by the name it is already loaded under returns that one."""
    for name in _CUDART_NAMES:
        try:
            library = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise RuntimeError(f"the CUDA runtime library ({_CUDART_NAMES[0]}) cannot be loaded")
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    library.cudaMemcpy.argtypes = [pointer, pointer, size, ctypes.c_int]
    library.cudaMemcpy2D.argtypes = [pointer, size, pointer, size, size, size, ctypes.c_int]
    library.cudaMemset.argtypes = [pointer, ctypes.c_int, size]
    library.cudaSetDevice.argtypes = [ctypes.c_int]
    library.cudaGetErrorString.restype = ctypes.c_char_p
    return library


def session_device(session: ort.InferenceSession) -> tuple[str, int]:
    """(ORT device type, device id) the session's first provider computes on (TensorRT's memory is
    CUDA memory)."""
    provider = session.get_providers()[0]
    if provider not in GPU_PROVIDERS:
        return "cpu", 0
    options: Optional[dict] = session.get_provider_options().get(provider)
    return "cuda", int((options or {}).get("device_id", 0))


def device_for(session: ort.InferenceSession, cpu_threads: int = 1) -> CpuDevice:
    """cpu_threads: how many threads may copy host memory at once (the session's intra-op threads)."""
    kind, device_id = session_device(session)
    return CudaDevice(device_id) if kind == "cuda" else CpuDevice(cpu_threads)
