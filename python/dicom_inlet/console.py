"""Terminal output of the command line: a live status line for ``serve`` and a progress bar
for ``send`` when writing to a terminal, plain lines otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from dicom_inlet.scu import InstanceResult, status_text
from dicom_inlet.server import StoreSCPServer

__all__ = ["SendProgress", "clock", "describe", "instances", "server_status"]

_CLEAR_LINE = "\r\x1b[K"
# How often the serve status line and the send progress bar are redrawn.
_STATUS_PERIOD = 0.5
_BAR_PERIOD = 0.1
# How often send prints a plain progress line when not on a terminal.
_PLAIN_PERIOD = 5.0


def _mb(count: int) -> float:
    return count / 1e6


def instances(count: int) -> str:
    """``1 instance``, ``2 instances``."""
    return f"{count} instance{'' if count == 1 else 's'}"


def clock(seconds: float) -> str:
    """A duration as ``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def describe(result: InstanceResult) -> str:
    """One line on a failed instance: what it is, the status in words, the comment."""
    what = "" if result.status is None else status_text(result.status)
    why = ": ".join(text for text in (what, result.error_comment) if text)
    return f"{result.path or result.sop_instance_uid}: {why or 'failed'}"


def _columns(stream: TextIO) -> int | None:
    """The terminal's width, None when unknown (not a terminal, or no size set)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError, AttributeError):
        return None


class _LiveLine:
    """One line redrawn in place at the bottom of a terminal; other lines print above it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.lock = threading.Lock()

    def show(self, text: str) -> None:
        # A line longer than the terminal wraps, and the carriage return then redraws only
        # its last part: cut it to the width.
        width = _columns(self.stream)
        if width:
            text = text[: width - 1]
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
    """Progress of ``send``: a bar redrawn in place (instances, MB, rate, elapsed time and
    an estimate of the time left) on a terminal, a plain line every few seconds otherwise,
    nothing when quiet. It also keeps what has completed, for a summary when interrupted."""

    def __init__(
        self,
        total: int,
        *,
        bar: bool,
        quiet: bool = False,
        stream: TextIO | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.done = 0
        self.stored = 0
        self.bytes = 0
        self.failures: list[InstanceResult] = []
        self.monotonic = monotonic
        self.started = self.shown = monotonic()
        self.stream = stream or sys.stderr
        self.live = _LiveLine(self.stream) if bar and not quiet else None
        self.plain = not bar and not quiet
        # Log records (warnings about files) print above the bar, as with serve's status line.
        root = logging.getLogger()
        self.saved_handlers = root.handlers[:]
        if self.live is not None:
            formatter = self.saved_handlers[0].formatter if self.saved_handlers else None
            root.handlers = [_AboveLiveLine(self.live, formatter)]

    @property
    def elapsed(self) -> float:
        """Seconds since the send started."""
        return self.monotonic() - self.started

    def _text(self, now: float) -> str:
        elapsed = now - self.started
        rate = _mb(self.bytes) / max(elapsed, 1e-9)
        # Files take about the same time each as far as the user can tell in advance.
        left = (
            f", {clock(elapsed * (self.total - self.done) / self.done)} left"
            if 0 < self.done < self.total
            else ""
        )
        failed = f", {len(self.failures)} failed" if self.failures else ""
        return (
            f"{self.done}/{instances(self.total)}, {_mb(self.bytes):.1f} MB, {rate:.1f} MB/s, "
            f"{clock(elapsed)} elapsed{left}{failed}"
        )

    def update(self, result: InstanceResult) -> None:
        """Count one completed instance and redraw when due."""
        self.done += 1
        self.bytes += result.bytes
        if result.ok:
            self.stored += 1
        else:
            self.failures.append(result)
        now = self.monotonic()
        if self.live is not None and (now - self.shown >= _BAR_PERIOD or self.done == self.total):
            width = 24
            filled = width * self.done // max(self.total, 1)
            self.live.show(f"[{'#' * filled}{'.' * (width - filled)}] {self._text(now)}")
            self.shown = now
        elif self.plain and now - self.shown >= _PLAIN_PERIOD:
            print(f"sent {self._text(now)}", file=self.stream, flush=True)
            self.shown = now

    def say(self, line: str) -> None:
        """Print a line above the bar (or plainly), even when quiet."""
        if self.live is not None:
            self.live.print_above(line)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Leave the terminal line clean for the summary."""
        if self.live is not None:
            self.live.clear()
            logging.getLogger().handlers = self.saved_handlers
