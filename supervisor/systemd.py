"""systemd's notify protocol, spoken over a plain socket: READY, STATUS, WATCHDOG, STOPPING.

Under `Type=notify` systemd hands the service a datagram socket in `$NOTIFY_SOCKET` (a
leading `@` means the abstract namespace) and, with `WatchdogSec=`, the keep-alive interval
in `$WATCHDOG_USEC`. The protocol is one datagram of `KEY=value` lines per message, so it
needs no library (the `sdnotify` package has been unmaintained since 2017 and hides socket
errors).

`SystemdNotifier` is driven by the supervisor's own loop: `tick()` is called once per loop
iteration, so a WATCHDOG=1 leaves only while that loop turns. A supervisor stuck anywhere
(a deadlock, a blocking call) stops pinging, and systemd restarts the unit.

The variables are removed from the environment when read, so that workers forked later do
not inherit the socket: with `NotifyAccess=main` systemd would ignore them anyway, and a
worker must never be able to ping on the supervisor's behalf.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

_MAX_STATUS_CHARS = 200


class SystemdNotifier:
    """Sends notify messages to systemd; every method is a no-op when not run by systemd."""

    def __init__(self, address: str | None, watchdog_s: float | None) -> None:
        self.address = address
        # Ping at half the interval, as sd_watchdog_enabled(3) asks.
        self.ping_every_s = watchdog_s / 2 if watchdog_s else None
        self.ready_sent = False
        self._next_ping = 0.0
        self._last_status = ""
        # Opened on first use, so that nothing of ours is inherited by the zygote, which
        # is forked after this object is made.
        self._sock: socket.socket | None = None
        self._closed = False

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> SystemdNotifier:
        """The notifier for this process, taking (and removing) systemd's variables."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        watchdog_usec = env.pop("WATCHDOG_USEC", None)
        watchdog_pid = env.pop("WATCHDOG_PID", None)
        watchdog_s: float | None = None
        if watchdog_usec:
            if watchdog_pid and watchdog_pid != str(os.getpid()):
                log.warning("WATCHDOG_PID=%s is not this process (%d): no watchdog pings",
                            watchdog_pid, os.getpid())
            else:
                try:
                    watchdog_s = int(watchdog_usec) / 1e6
                except ValueError:
                    log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds",
                                watchdog_usec)
        if address is not None:
            log.info("systemd notify socket %s, watchdog %s", address,
                     f"every {watchdog_s:g} s" if watchdog_s else "off")
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None and not self._closed

    def send(self, *lines: str) -> bool:
        """Send one message of `lines`; False (and a log line) if systemd cannot be told."""
        if self.address is None or self._closed:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto("\n".join(lines).encode(), target)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def tick(self, now: float, worker_states: Mapping[str, str], shutting_down: bool) -> None:
        """Called by the supervisor loop each turn: READY once every worker runs, a STATUS
        line whenever the summary changes, WATCHDOG=1 when due."""
        if not self.enabled:
            return
        summary = status_line(worker_states.items(), shutting_down)
        all_running = bool(worker_states) and all(
            state == "running" for state in worker_states.values())
        if not self.ready_sent and (all_running or not worker_states) and not shutting_down:
            self.ready_sent = self.send("READY=1", f"STATUS={summary}")
            self._last_status = summary
        elif summary != self._last_status:
            self.send(f"STATUS={summary}")
            self._last_status = summary
        if self.ping_every_s is not None and now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.ping_every_s

    def next_due_s(self, now: float) -> float | None:
        """Seconds until the next watchdog ping, for the loop's poll timeout."""
        if not self.enabled or self.ping_every_s is None:
            return None
        return max(0.0, self._next_ping - now)

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping workers")

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(worker_states: Iterable[tuple[str, str]], shutting_down: bool) -> str:
    """One line for `systemctl status`: how many workers run, and which do not."""
    states = list(worker_states)
    running = sum(1 for _name, state in states if state == "running")
    others = ", ".join(f"{name} {state}" for name, state in states if state != "running")
    line = f"{running}/{len(states)} workers running"
    if others:
        line += f" ({others})"
    if shutting_down:
        line = "stopping: " + line
    return line[:_MAX_STATUS_CHARS]
