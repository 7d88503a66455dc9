"""Terminal output of the command line: a live status line for ``serve`` and a progress bar
for ``send`` when writing to a terminal, plain lines otherwise."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from dicom_inlet.scu import InstanceResult, status_text
from dicom_inlet.server import StoreSCPServer

__all__ = ["SendProgress", "describe", "server_status"]

_CLEAR_LINE = "\r\x1b[K"
# How often the serve status line and the send progress bar are redrawn.
_STATUS_PERIOD = 0.5
_BAR_PERIOD = 0.1
# How often send prints a plain progress line when not on a terminal.
_PLAIN_PERIOD = 5.0


def _mb(count: int) -> float:
    return count / 1e6


def describe(result: InstanceResult) -> str:
    """One line on a failed instance: what it is, the status in words, the comment."""
    what = "" if result.status is None else status_text(result.status)
    why = ": ".join(text for text in (what, result.error_comment) if text)
    return f"{result.path or result.sop_instance_uid}: {why or 'failed'}"


class _LiveLine:
    """One line redrawn in place at the bottom of a terminal; other lines print above it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.lock = threading.Lock()

    def show(self, text: str) -> None:
        with self.lock:
            self.text = text
            self.stream.write(_CLEAR_LINE + text)
            self.stream.flush()

    def print_above(self, line: str) -> None:
        with self.lock:
            self.stream.write(f"{_CLEAR_LINE}{line}\n{self.text}")
            self.stream.flush()

    def clear(self) -> None:
        with self.lock:
            self.text = ""
            self.stream.write(_CLEAR_LINE)
            self.stream.flush()


class _AboveLiveLine(logging.Handler):
    """Log records printed above the live line instead of through it."""

    def __init__(self, live: _LiveLine, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.live = live
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.live.print_above(self.format(record))
        except Exception:
            self.handleError(record)


def _server_line(server: StoreSCPServer, live: _LiveLine, stop: threading.Event) -> None:
    last_bytes, last_time = 0, time.monotonic()
    while not stop.wait(_STATUS_PERIOD):
        scp = server.scp
        if scp is None:
            continue
        stats = scp.stats()
        now = time.monotonic()
        rate = _mb(stats.bytes - last_bytes) / max(now - last_time, 1e-9)
        last_bytes, last_time = stats.bytes, now
        refused = f" ({stats.failures} refused)" if stats.failures else ""
        live.show(
            f"{stats.associations} associations open · {stats.instances} instances stored"
            f"{refused} · {_mb(stats.bytes):.1f} MB · {rate:.1f} MB/s"
        )


@contextlib.contextmanager
def server_status(server: StoreSCPServer, *, enabled: bool) -> Iterator[None]:
    """While serving, keep a status line (associations open, instances, MB/s) on stderr,
    with the log lines printed above it; nothing when not ``enabled``."""
    if not enabled:
        yield
        return
    live = _LiveLine(sys.stderr)
    root = logging.getLogger()
    saved = root.handlers[:]
    formatter = saved[0].formatter if saved else None
    root.handlers = [_AboveLiveLine(live, formatter)]
    stop = threading.Event()
    ticker = threading.Thread(
        target=_server_line, args=(server, live, stop), name="dicom-inlet-status", daemon=True
    )
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        live.clear()
        root.handlers = saved


class SendProgress:
    """Progress of ``send``: a bar redrawn in place (instances, MB, rate) on a terminal,
    a plain line every few seconds otherwise, nothing when quiet."""

    def __init__(
        self, total: int, *, bar: bool, quiet: bool = False, stream: TextIO | None = None
    ) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self.started = self.shown = time.monotonic()
        self.stream = stream or sys.stderr
        self.live = _LiveLine(self.stream) if bar and not quiet else None
        self.plain = not bar and not quiet

    def _text(self, now: float) -> str:
        rate = _mb(self.bytes) / max(now - self.started, 1e-9)
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.done}/{self.total} instances, {_mb(self.bytes):.1f} MB, {rate:.1f} MB/s{failed}"
        )

    def update(self, result: InstanceResult) -> None:
        """Count one completed instance and redraw when due."""
        self.done += 1
        self.bytes += result.bytes
        self.failed += not result.ok
        now = time.monotonic()
        if self.live is not None and (now - self.shown >= _BAR_PERIOD or self.done == self.total):
            width = 24
            filled = width * self.done // max(self.total, 1)
            self.live.show(f"[{'#' * filled}{'.' * (width - filled)}] {self._text(now)}")
            self.shown = now
        elif self.plain and now - self.shown >= _PLAIN_PERIOD:
            print(f"sent {self._text(now)}", file=self.stream, flush=True)
            self.shown = now

    def close(self) -> None:
        """Leave the terminal line clean for the summary."""
        if self.live is not None:
            self.live.clear()
