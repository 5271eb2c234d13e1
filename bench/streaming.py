"""Streaming mode's measurements, with a raw-socket client (no HTTP library between
the bytes and the clock): a large body through `cat` both ways at once, and the
time to the first byte of a function that writes, then sleeps.

HTTP/1.0 with a Content-Length: the body is sent while the answer is read, and the
answer ends with the connection (no chunks to parse), from every watchdog alike.
"""

from __future__ import annotations

import socket
import threading
import time

PIECE = bytes(2**20)


def through(port: int, size: int) -> tuple[float, int, bytes]:
    """Send `size` bytes and read the answer at once: (seconds, body bytes back,
    the status line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        started = time.perf_counter()
        sock.sendall(b"PUT / HTTP/1.0\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % size)
        failure: list[BaseException] = []

        def send() -> None:
            try:
                left = size
                while left:
                    piece = PIECE if left >= len(PIECE) else PIECE[:left]
                    sock.sendall(piece)
                    left -= len(piece)
            except OSError as exc:
                failure.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        head = b""
        in_body = False
        received = 0
        while True:
            data = sock.recv(2**20)
            if not data:
                break
            if in_body:
                received += len(data)
                continue
            head += data
            if b"\r\n\r\n" in head:
                head, _, body = head.partition(b"\r\n\r\n")
                received += len(body)
                in_body = True
        seconds = time.perf_counter() - started
        sender.join(10)
        if failure:
            raise failure[0]
    return seconds, received, head.split(b"\r\n", 1)[0]


def first_byte_ms(port: int) -> float:
    """Milliseconds from the request to the first byte of the function's output."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.perf_counter()
        sock.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        seen = b""
        while b"\r\n\r\n" not in seen or seen.endswith(b"\r\n\r\n"):
            data = sock.recv(65536)
            if not data:
                return float("nan")
            seen += data
        return (time.perf_counter() - started) * 1e3
