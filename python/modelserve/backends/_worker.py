"""The worker process of a process-isolated instance (``instances: {isolation: process}``).

Started by the core (csrc/exec/process_backend.cc, Note [Process instances]) as
``python -m modelserve.backends._worker``, with its control socket on file descriptor 3 and its
stdout and stderr going to the server log. It loads one instance of a Python model and runs the
batches the core sends, reading inputs from and writing outputs to shared-memory segments the core
owns; only small descriptors cross the socket. This module is the Python half of the message
layouts described in process_backend.cc; keep the two in step.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

_FD = 3
_MAX_MESSAGE = 1 << 16
_MAX_FDS = 250

# The core's DataType codes (csrc/common/datatype.h), in order. BF16 travels as uint16 bits.
_DTYPES = [
    np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64),
    np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64),
    np.dtype(np.float16), np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.float64), np.dtype(object),
]
_BYTES = 13
_CODE_OF = {np.dtype(np.bool_): 0, np.dtype(np.uint8): 1, np.dtype(np.uint16): 2, np.dtype(np.uint32): 3,
            np.dtype(np.uint64): 4, np.dtype(np.int8): 5, np.dtype(np.int16): 6, np.dtype(np.int32): 7,
            np.dtype(np.int64): 8, np.dtype(np.float16): 9, np.dtype(np.float32): 11, np.dtype(np.float64): 12}

_BATCH = struct.Struct("<BxHHHHHq")
_SEGMENT = struct.Struct("<IQ")
_TENSOR = struct.Struct("<BBHIQQ")
_BLOCKS = struct.Struct("<BxHH")
_WANT = struct.Struct("<BBHQ")
_DONE_ENTRY = struct.Struct("<BBHiQ")
_COUNT = struct.Struct("<BxH")
_ERROR = struct.Struct("<BxHi")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_LEN = struct.Struct("<I")


class _Segments:
    """The shared-memory segments this worker has mapped, by the core's segment id."""

    def __init__(self) -> None:
        self.maps: dict[int, mmap.mmap] = {}

    def take(self, msg: bytes, pos: int, count: int, fds: list[int]) -> int:
        for i in range(count):
            seg, size = _SEGMENT.unpack_from(msg, pos)
            pos += _SEGMENT.size
            fd = fds[i]
            try:
                self.maps[seg] = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
        return pos

    def drop(self, seg: int) -> None:
        m = self.maps.pop(seg, None)
        if m is not None:
            try:
                m.close()
            except BufferError:  # a view of it is still alive (a model kept an input): leave it to the GC
                pass

    def view(self, seg: int, offset: int, nbytes: int) -> memoryview:
        return memoryview(self.maps[seg])[offset : offset + nbytes]


def _read_tensor(msg: bytes, pos: int) -> tuple[int, tuple[int, ...], str, int, int, int, int]:
    code, ndim, name_len, seg, offset, nbytes = _TENSOR.unpack_from(msg, pos)
    pos += _TENSOR.size
    dims = struct.unpack_from(f"<{ndim}q", msg, pos)
    pos += 8 * ndim
    name = msg[pos : pos + name_len].decode()
    return code, dims, name, seg, offset, nbytes, pos + name_len


def _decode_bytes(buf: memoryview, count: int) -> np.ndarray:
    out = np.empty(count, dtype=object)
    data = bytes(buf)
    pos = 0
    for i in range(count):
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        out[i] = data[pos : pos + n]
        pos += n
    return out


def _encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode()
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            raise TypeError(f"BYTES output element is a {type(item).__name__}, not bytes or str")
        parts.append(_LEN.pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def _as_output(name: str, value: Any) -> tuple[int, np.ndarray, bytes | None]:
    """(datatype code, array, serialised BYTES or None) of one returned output."""
    array = np.asarray(value)
    if array.dtype.kind in "OSU":
        return _BYTES, array, _encode_bytes(array)
    if str(array.dtype) == "bfloat16":
        return 10, array.view(np.uint16), None
    code = _CODE_OF.get(array.dtype.newbyteorder("=") if array.dtype.byteorder not in "=|" else array.dtype)
    if code is None:
        raise TypeError(f"output '{name}' has numpy dtype {array.dtype}, which has no Open Inference Protocol datatype")
    return code, array, None


class Worker:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.segments = _Segments()
        self.spin_s = 0.0
        self.spinning = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> tuple[bytes, list[int]]:
        # Note [Spinning for replies] in process_backend.h: wait awake for up to spin_s while the
        # last message came that soon; sleep in recv() otherwise.
        if self.spinning and self.spin_s > 0:
            until = time.perf_counter() + self.spin_s
            self.sock.setblocking(False)
            try:
                while True:
                    try:
                        msg, fds, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, _MAX_FDS)
                        return msg, fds
                    except BlockingIOError:
                        if time.perf_counter() > until:
                            break
            finally:
                self.sock.setblocking(True)
        start = time.perf_counter()
        msg, fds, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, _MAX_FDS)
        self.spinning = time.perf_counter() - start < 2 * self.spin_s  # a sleeping wait includes its wake-up
        return msg, fds

    def error(self, e: BaseException) -> None:
        from ..errors import InternalError, ModelserveError

        if isinstance(e, ModelserveError) and not isinstance(e, InternalError):
            code, text = int(getattr(e, "code", -1)), str(e)
        else:
            code, text = -1, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        payload = text.encode("utf-8", "replace")[: _MAX_MESSAGE - _ERROR.size]
        self.send(_ERROR.pack(ord("E"), 0, code) + payload)

    # --- start ----------------------------------------------------------------------------------
    def load(self, instance: int, init: dict[str, Any]) -> None:
        for entry in reversed(init.get("sys_path", [])):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self.spin_s = float(init.get("spin_us", 0)) * 1e-6
        from ..config import ModelConfig
        from .base import BackendContext
        from .python import PythonBackend

        config = ModelConfig.model_validate(init["config"])
        ctx = BackendContext(init["model"], init["version"], Path(init["version_dir"]), config,
                             device="cpu", instance=instance)
        backend = PythonBackend(ctx)
        backend.load()
        self.backend = backend
        self.execute = backend.execute

    # --- batches --------------------------------------------------------------------------------
    def batch(self, msg: bytes, fds: list[int]) -> None:
        _, n_new, n_drop, n_in, n_pre, n_req, _batch_size = _BATCH.unpack_from(msg, 0)
        pos = self.segments.take(msg, _BATCH.size, n_new, fds)
        for _ in range(n_drop):
            self.segments.drop(_U32.unpack_from(msg, pos)[0])
            pos += 4
        inputs: dict[str, np.ndarray] = {}
        for _ in range(n_in):
            code, dims, name, seg, offset, nbytes, pos = _read_tensor(msg, pos)
            buf = self.segments.view(seg, offset, nbytes)
            if code == _BYTES:
                inputs[name] = _decode_bytes(buf, int(np.prod(dims, dtype=np.int64))).reshape(dims)
            else:
                inputs[name] = np.frombuffer(buf, dtype=_DTYPES[code]).reshape(dims)
        prealloc: dict[str, tuple[int, int, tuple[int, ...], memoryview]] = {}
        for slot in range(n_pre):
            code, dims, name, seg, offset, nbytes, pos = _read_tensor(msg, pos)
            prealloc[name] = (slot, code, dims, self.segments.view(seg, offset, nbytes))
        requested = []
        for _ in range(n_req):
            (n,) = _U16.unpack_from(msg, pos)
            requested.append(msg[pos + 2 : pos + 2 + n].decode())
            pos += 2 + n

        result = self.execute(inputs)
        if not hasattr(result, "items"):
            raise TypeError(f"execute() must return a dict of output name to numpy array, got {type(result).__name__}")
        done: list[bytes] = []
        wanted: list[tuple[str, int, np.ndarray, bytes | None]] = []
        for name, value in result.items():
            name = str(name)
            if requested and name not in requested:
                continue
            code, array, serialised = _as_output(name, value)
            pre = prealloc.get(name)
            if pre is not None and serialised is None and pre[1] == code and tuple(array.shape) == pre[2]:
                slot, _, _, view = pre
                np.copyto(np.frombuffer(view, dtype=array.dtype).reshape(array.shape), array, casting="no")
                done.append(self._entry(name, code, array.shape, slot, array.nbytes))
            else:
                wanted.append((name, code, array, serialised))
        if wanted:
            ask = [_COUNT.pack(ord("A"), len(wanted))]
            for name, code, array, serialised in wanted:
                nbytes = len(serialised) if serialised is not None else array.nbytes
                encoded = name.encode()
                ask.append(_WANT.pack(code, array.ndim, len(encoded), nbytes))
                ask.append(struct.pack(f"<{array.ndim}q", *array.shape))
                ask.append(encoded)
            self.send(b"".join(ask))
            reply, fds = self.recv()
            kind, n_new, n_blocks = _BLOCKS.unpack_from(reply, 0)
            if kind != ord("K") or n_blocks != len(wanted):
                raise RuntimeError(f"the core answered an allocation with {chr(kind)!r} for {n_blocks} blocks")
            pos = self.segments.take(reply, _BLOCKS.size, n_new, fds)
            for i, (name, code, array, serialised) in enumerate(wanted):
                seg, offset = _SEGMENT.unpack_from(reply, pos)
                pos += _SEGMENT.size
                nbytes = len(serialised) if serialised is not None else array.nbytes
                view = self.segments.view(seg, offset, nbytes)
                if serialised is not None:
                    view[:] = serialised
                elif nbytes:
                    dst = np.frombuffer(view, dtype=array.dtype if code != 10 else np.uint16).reshape(array.shape)
                    np.copyto(dst, array, casting="no")
                done.append(self._entry(name, code, array.shape, -1 - i, nbytes))
        self.send(_COUNT.pack(ord("D"), len(done)) + b"".join(done))

    @staticmethod
    def _entry(name: str, code: int, shape: tuple[int, ...], slot: int, nbytes: int) -> bytes:
        encoded = name.encode()
        return (_DONE_ENTRY.pack(code, len(shape), len(encoded), slot, nbytes) + struct.pack(f"<{len(shape)}q", *shape)
                + encoded)

    def serve(self) -> int:
        while True:
            msg, fds = self.recv()
            if not msg or msg[0] == ord("Q"):
                break
            if msg[0] != ord("B"):
                for fd in fds:
                    os.close(fd)
                raise RuntimeError(f"unexpected message {msg[:1]!r} from the core")
            try:
                self.batch(msg, fds)
            except Exception as e:  # fails only this batch, as in a thread instance
                self.error(e)
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.unload()
        return 0


def _exit_with_server() -> None:
    """Ends this worker when the server is gone, even while execute() hangs: the socket's end of
    file stops a waiting worker, this one a busy one (the kernel re-parents an orphan)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="modelserve-worker-watchdog", daemon=True).start()


def main() -> int:
    _exit_with_server()
    # ^C at a terminal and SIGTERM to the whole group (systemd's default KillMode, `timeout`) are the
    # server's to handle: it finishes the running batches, then asks each worker to quit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=_FD)
    worker = Worker(sock)
    msg, fds = worker.recv()
    if not msg or msg[0] != ord("I"):
        return 2
    try:
        (instance,) = struct.unpack_from("<i", msg, 4)
        worker.load(instance, json.loads(msg[8:]))
    except BaseException as e:
        traceback.print_exc()
        worker.error(e)
        return 1
    worker.send(b"R")
    return worker.serve()


if __name__ == "__main__":
    sys.exit(main())
