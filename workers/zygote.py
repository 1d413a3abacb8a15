"""A fork server: a fresh interpreter, holding no sockets, threads or handles, that forks
children on request.

Why: a worker must start from a clean process (no ZeroMQ context, socket, thread or
database handle crossing a fork), yet exec'ing a fresh interpreter and re-importing zmq,
msgpack, psutil and apsw costs 50-80 ms per start. The zygote imports the heavy modules once,
holds no state, and forks a child in a few milliseconds. It is itself started by fork+exec,
so its owner may start (or restart) it at any time, whatever the owner already holds.

The owner talks to it over a SOCK_SEQPACKET socketpair with msgpack messages; file
descriptors for the child (its stdout/stderr pipe, a task channel) travel with the request
as SCM_RIGHTS. The zygote reaps its children on SIGCHLD and reports each exit at once, so
the owner learns of a death by its socket becoming readable, never by a polling timer.

Lifetime: the zygote dies with its owner (PR_SET_PDEATHSIG), and each child dies with the
zygote, so nothing outlives a SIGKILLed owner by more than a moment.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import importlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import msgpack

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# A zygote still importing its preload is slow, not dead: a spawn waits for it this long
# after its start (a small board may take seconds to import Reticulum and cryptography).
PRELOAD_TIMEOUT_S = 60.0
_MAX_MESSAGE = 1 << 20
_MAX_FDS = 8


_libc: ctypes.CDLL | None = None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` when our parent exits; exit now if it already has."""
    global _libc
    parent = os.getppid()
    try:
        # Loaded once, in the zygote: every child it forks finds the handle ready.
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's own cleanup must do
        return
    if os.getppid() != parent or parent == 1:
        os._exit(1)


@dataclass(frozen=True)
class Exited:
    pid: int
    returncode: int  # exit status, or -N for death by signal N


@dataclass(frozen=True)
class Spawned:
    ref: int
    pid: int


class ZygoteError(Exception):
    pass


class Zygote:
    """The owner's handle on a fork server."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.started_at = time.monotonic()
        self.ready = False  # its preload is imported (it said so)
        self.ready_at = 0.0
        self._ref = 0
        self._pending: list[Exited] = []
        self._asked: dict[int, float] = {}      # ref of each `request` unanswered → asked at
        self._spawned: list[Spawned] = []       # answers to requests, for `take_spawned`
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, preload: list[str], *, child_death_signal: int = signal.SIGTERM,
              title: str = "zygote") -> Zygote:
        """Start a fork server in a fresh interpreter with `preload` modules imported."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.zygote", str(child_end.fileno()),
                 ",".join(preload), str(int(child_death_signal)), title],
                pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        zygote = cls(parent_end, proc.pid)
        zygote._proc = proc
        return zygote

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, target: str, args: Any, *, fds: dict[int, int] | None = None,
              timeout_s: float = 5.0) -> int:
        """Fork a child running `target` ("module:function") with `args`; return its pid.

        `fds` maps a descriptor number in the child to one of ours (e.g. {1: w, 2: w}).
        Exits reported meanwhile are kept for `events()`.
        """
        ref = self._send_spawn(target, args, fds)
        asked_at = time.monotonic()
        while True:
            remaining = self._deadline(asked_at, timeout_s) - time.monotonic()
            if remaining <= 0 and self._importing():
                remaining = 0.1  # slow, not dead
            elif remaining <= 0:
                raise ZygoteError(f"zygote did not fork {target} within {timeout_s:g} s")
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                continue
            for event in self._read():
                if isinstance(event, Spawned) and event.ref == ref:
                    return event.pid
                if isinstance(event, Exited):
                    self._pending.append(event)
                else:
                    self._answered(event)

    def request(self, target: str, args: Any, *, fds: dict[int, int] | None = None) -> int:
        """Ask for a child as `spawn` does, without waiting: returns the request's ref; the
        child's pid comes with it from `take_spawned` once `events` has read the answer
        (the socket turns readable), and `late` says when it is overdue."""
        ref = self._send_spawn(target, args, fds)
        self._asked[ref] = time.monotonic()
        return ref

    def take_spawned(self) -> list[Spawned]:
        """Answers to `request`s read so far, in order."""
        out, self._spawned = self._spawned, []
        return out

    def late(self, timeout_s: float) -> bool:
        """Has a `request` gone unanswered for `timeout_s` since the zygote could first
        answer? (One still importing its preload is slow, not dead.)"""
        if not self._asked:
            return False
        oldest = min(self._asked.values())
        return time.monotonic() > self._deadline(oldest, timeout_s) and not self._importing()

    def _deadline(self, asked_at: float, timeout_s: float) -> float:
        """When a request asked at `asked_at` is overdue: the time allowed counts from when
        the zygote could first answer (its preload imported)."""
        return max(asked_at, self.ready_at) + timeout_s

    def _send_spawn(self, target: str, args: Any, fds: dict[int, int] | None) -> int:
        self._ref += 1
        targets = list((fds or {}).items())
        body = msgpack.packb({"op": "spawn", "ref": self._ref, "target": target, "args": args,
                              "fds": [child for child, _ in targets]}, use_bin_type=True)
        socket.send_fds(self.sock, [body], [ours for _, ours in targets])
        return self._ref

    def _answered(self, event: Spawned) -> None:
        if self._asked.pop(event.ref, None) is not None:
            self._spawned.append(event)

    def _importing(self) -> bool:
        """Still importing its preload (not ready, not stopped, not for too long)."""
        if self.ready or time.monotonic() - self.started_at >= PRELOAD_TIMEOUT_S:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True  # no /proc: trust the clock alone
        return state not in ("T", "t", "Z")

    def events(self) -> list[Exited]:
        """Exits reported since the last call (non-blocking); answers to `request`s read
        meanwhile are kept for `take_spawned`."""
        out, self._pending = self._pending, []
        while select.select([self.sock], [], [], 0)[0]:
            for event in self._read():
                if isinstance(event, Exited):
                    out.append(event)
                else:
                    self._answered(event)
        return out

    def _read(self) -> list[Exited | Spawned]:
        try:
            data = self.sock.recv(_MAX_MESSAGE)
        except BlockingIOError:
            return []
        if not data:
            raise ZygoteError("zygote exited")
        body = msgpack.unpackb(data, raw=False)
        if body["op"] == "ready":
            self.ready, self.ready_at = True, time.monotonic()
            return []
        if body["op"] == "exited":
            return [Exited(body["pid"], body["returncode"])]
        if body["op"] == "spawned":
            return [Spawned(body["ref"], body["pid"])]
        if body["op"] == "failed":
            raise ZygoteError(body["error"])
        return []

    def kill(self) -> None:
        """SIGKILL the zygote (dead, stopped or hung alike) and reap it; its children follow
        through their death signal."""
        self.sock.close()
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the zygote (its socket closes) and reap it."""
        self.sock.close()
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class _Server:
    def __init__(self, sock: socket.socket, preload: list[str], child_death_signal: int,
                 title: str) -> None:
        self.sock = sock
        self.preload = preload
        self.child_death_signal = child_death_signal
        self.title = title
        self.children: set[int] = set()

    def serve(self) -> int:
        die_with_parent(signal.SIGKILL)
        # The owner decides when we and our children stop: it closes our socket, and its
        # death kills us (above). A signal to the owner's whole process group (a terminal's
        # Ctrl-C, `timeout`, a container runtime's SIGTERM, a hangup) is for the owner, which
        # then stops its workers in order; dying of it here would take them all at once.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for module in self.preload:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - a broken module is reported when a child needs it
                print(f"{self.title}: cannot preload {module}:\n{traceback.format_exc()}",
                      file=sys.stderr, flush=True)
        # Out of the cyclic collector's sight: a collection in a child would otherwise write
        # to the header of every object it inherited, copying the zygote's pages one by one
        # (slower starts, and memory no longer shared).
        gc.freeze()
        self._send({"op": "ready"})
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        while True:
            try:
                ready, _, _ = select.select([self.sock.fileno(), wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                os.read(wake_r, 512)
                self._reap()
            if self.sock.fileno() in ready and not self._serve_request(wake_r, wake_w):
                return 0

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            self._send({"op": "exited", "pid": pid, "returncode": code})

    def _send(self, body: dict[str, Any]) -> None:
        try:
            self.sock.send(msgpack.packb(body, use_bin_type=True))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise

    def _serve_request(self, wake_r: int, wake_w: int) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_MESSAGE, _MAX_FDS)
        except ConnectionResetError:
            return False
        if not data:
            return False  # the owner closed us: its children follow through their death signal
        body = msgpack.unpackb(data, raw=False)
        if body.get("op") != "spawn":
            self._send({"op": "failed", "error": f"unknown op {body.get('op')!r}"})
            return True
        _prepare(body["target"], body["args"])
        pid = os.fork()
        if pid == 0:
            self._become_child(body, fds, wake_r, wake_w)
        for fd in fds:
            os.close(fd)
        self.children.add(pid)
        self._send({"op": "spawned", "ref": body["ref"], "pid": pid})
        return True

    def _become_child(self, body: dict[str, Any], fds: list[int], wake_r: int,
                      wake_w: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            self.sock.close()
            die_with_parent(self.child_death_signal)
            os.setpgid(0, 0)  # out of the terminal's group: Ctrl-C reaches the owner only
            for child_fd, fd in zip(body["fds"], fds):
                if child_fd != fd:
                    os.dup2(fd, child_fd)
            for fd in fds:
                if fd not in body["fds"]:
                    os.close(fd)
            module_name, _, function = body["target"].partition(":")
            entry = getattr(importlib.import_module(module_name), function)
            result = entry(body["args"])
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - a child must never return into the zygote's loop
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def _prepare(target: str, args: Any) -> None:
    """Run the target module's `prepare_in_zygote(args)`, if it has one, before the fork.

    Why: work every child would repeat with the same arguments (parsing the config text a
    worker is started with) is done once here, and a restarted child finds the result in
    memory it shares with us. The hook may only compute and cache pure data: no socket,
    thread, file handle or anything stateful may stay behind in the zygote. Whatever goes
    wrong here is the child's to find out and report, so it is ignored."""
    module_name, _, _function = target.partition(":")
    module = sys.modules.get(module_name)
    hook = getattr(module, "prepare_in_zygote", None)
    if hook is None:
        return
    try:
        hook(args)
    except Exception:  # noqa: BLE001, S110 - the child repeats the work and reports errors
        pass


def _main(argv: list[str]) -> int:
    fd, preload, death_signal, title = argv
    sock = socket.socket(fileno=int(fd))
    modules = [m for m in preload.split(",") if m]
    return _Server(sock, modules, int(death_signal), title).serve()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
