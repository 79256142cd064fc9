"""Length-prefixed frames over raw pipes.

A frame is a 4-byte big-endian payload length followed by the payload. The parent reads frames
with :class:`FrameProtocol` (an :class:`asyncio.Protocol` for ``loop.connect_read_pipe``), so
reading never needs a thread per child; it writes through the buffered transport that
``loop.connect_write_pipe`` returns, so a child that is slow to read never blocks the loop.
Children use the blocking helpers :class:`FrameReader` and :func:`write_frame`.
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
from collections import deque
from collections.abc import Callable

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "FrameError",
    "FrameProtocol",
    "FrameReader",
    "encode_frame",
    "write_frame",
]

HEADER = struct.Struct(">I")
#: Largest payload a frame may carry (the 4-byte header could express 4 GiB; refuse sooner).
MAX_FRAME = 1 << 30
_READ_CHUNK = 1 << 18


class FrameError(Exception):
    """A frame header announced an impossible length (the stream is corrupt)."""


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` with its length header, ready to write."""
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the limit of {MAX_FRAME} bytes")
    return HEADER.pack(len(payload)) + payload


class FrameProtocol(asyncio.Protocol):
    """Accumulates bytes from a read pipe and calls ``on_frame(payload)`` per complete frame.

    Handles frames split over many reads and many frames in one read. ``on_eof()`` is called
    once when the pipe closes (after every complete frame before it was delivered).
    """

    def __init__(
        self, on_frame: Callable[[bytes], None], on_eof: Callable[[], None] | None = None
    ) -> None:
        self._on_frame = on_frame
        self._on_eof = on_eof
        self._buf = bytearray()
        self._stash: deque[bytes] = deque()
        self._feeding = False
        self._closed = False
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._feeding:
            # Called again from inside on_frame (a callback drained the pipe): keep the bytes
            # in order behind those being parsed; the outer call parses them next.
            self._stash.append(data)
            return
        self._feeding = True
        try:
            self._feed(data)
            while self._stash:
                self._feed(self._stash.popleft())
        finally:
            self._feeding = False

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        if not buf and len(data) >= 4:
            # Fast path: whole frames in a fresh read need no copy into the buffer.
            pos = 0
            end = len(data)
            while end - pos >= 4:
                (size,) = HEADER.unpack_from(data, pos)
                if size > MAX_FRAME:
                    raise FrameError(f"frame header announces {size} bytes")
                if end - pos - 4 < size:
                    break
                self._on_frame(data[pos + 4 : pos + 4 + size])
                pos += 4 + size
            if pos < end:
                buf += memoryview(data)[pos:]
            return
        buf += data
        while len(buf) >= 4:
            (size,) = HEADER.unpack_from(buf, 0)
            if size > MAX_FRAME:
                raise FrameError(f"frame header announces {size} bytes")
            if len(buf) - 4 < size:
                return
            payload = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]  # bytearray trims its head in O(1)
            self._on_frame(payload)

    def eof_received(self) -> bool:
        self._fire_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fire_eof()

    def _fire_eof(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_eof is not None:
                self._on_eof()

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)


class FrameReader:
    """Blocking frame reader over a file descriptor (the child side).

    Reads in large chunks and keeps what is left over, so several frames written together
    cost one system call.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()

    def read_frame(self) -> bytes | None:
        """Return the next frame's payload, or ``None`` at end of file."""
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (size,) = HEADER.unpack_from(buf, 0)
                if size > MAX_FRAME:
                    raise FrameError(f"frame header announces {size} bytes")
                if len(buf) - 4 >= size:
                    payload = bytes(buf[4 : 4 + size])
                    del buf[: 4 + size]
                    return payload
                want = max(_READ_CHUNK, 4 + size - len(buf))
            else:
                want = _READ_CHUNK
            chunk = os.read(self.fd, want)
            if not chunk:
                return None
            buf += chunk

    def has_frame(self) -> bool:
        """True when :meth:`read_frame` would not block (a complete frame, or end of file)."""
        if self._complete():
            return True
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                return False
            chunk = os.read(self.fd, _READ_CHUNK)
            if not chunk:
                return True  # end of file: read_frame() reports it without blocking
            self._buf += chunk
            if self._complete():
                return True

    def _complete(self) -> bool:
        buf = self._buf
        if len(buf) < 4:
            return False
        (size,) = HEADER.unpack_from(buf, 0)
        return len(buf) - 4 >= size


def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame to a blocking descriptor, looping over partial writes."""
    data = memoryview(encode_frame(payload))
    while data:
        written = os.write(fd, data)
        data = data[written:]
