"""akitactl verbs for the node itself: status, start/stop/restart WORKER, shutdown, reload,
top, events and log.

`status` and the worker verbs ask the supervisor over the control socket; `top` and `events`
follow the bus; `log` reads the log files directly, so it works with no node running.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from akita import catalogue, resources, rundir
from akita import config as config_mod
from akita.cli import cluster as cluster_cli
from akita.cli import common, gateway_status, traffic
from akita.errors import AkitaError, NodeNotResponding
from akita.text import clean
from akita.wire import protocol

# Fields `status --json` always carries for each worker, in this order.
STATUS_FIELDS = ("name", "state", "pid", "uptime_s", "restarts", "cpu_percent", "rss_bytes")
POLL_S = 0.05  # how often a waiting verb re-asks the supervisor
FOLLOW_POLL_S = 0.2  # how often `log -f` looks for new lines


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    def verb(name: str, handler: Callable[[argparse.Namespace], int], summary: str,
             description: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, parents=[parent], help=summary, description=description)
        common.add_json(parser)
        parser.set_defaults(func=handler)
        return parser

    verb("status", cmd_status, "workers, pids, uptime, restarts, CPU and RSS",
         "Show the node and each worker: state (starting, running, backoff, stopping, "
         "stopped, fatal), pid, uptime, restarts, CPU % and resident memory.")
    for action, summary in (("start", "start a stopped worker"), ("stop", "stop a worker"),
                            ("restart", "stop a worker and start it again")):
        parser = verb(action, cmd_worker, summary,
                      f"{summary[0].upper()}{summary[1:]} and wait until it is done "
                      "(see --no-wait). The other workers are not touched.")
        parser.add_argument("worker", metavar="WORKER", help="the worker's name, e.g. sampler")
        _add_wait(parser, 30.0)
    parser = verb("shutdown", cmd_shutdown, "stop every worker and the supervisor",
                  "Stop the workers in reverse start order, then the supervisor, and wait "
                  "until it has exited (see --no-wait).")
    _add_wait(parser, 120.0)
    verb("reload", cmd_reload, "re-read the config; restart workers whose settings changed",
         "Re-read the config file, as SIGHUP does, and restart only the workers whose "
         "settings changed.")
    parser = verb("top", cmd_top, "live per-process view of CPU and memory",
                  "Show the host and every node process (supervisor, zygote, workers, tasks), "
                  "refreshed on each resource sample. Ctrl-C ends it. With --json, one JSON "
                  "object per sample and line.")
    parser.add_argument("--count", type=common.positive_int, metavar="N",
                        help="exit after N samples (for scripts)")
    parser = verb("events", cmd_events, "follow the node's event bus",
                  "Print each message published on the node's bus, one line each: worker "
                  "heartbeats and state changes, resource samples and alerts, committed "
                  "ledger events. Ctrl-C ends it. With --json, one JSON object per line.")
    parser.add_argument("--topic", action="append", metavar="PREFIX", default=[],
                        help="only topics starting with PREFIX (e.g. worker. or resource.); "
                             "repeat for several")
    parser.add_argument("--count", type=common.positive_int, metavar="N",
                        help="exit after N messages")
    parser.add_argument("--timeout", type=common.positive_seconds, metavar="S",
                        help="exit after S seconds (with --count: exit 1 if fewer came)")
    parser = verb("log", cmd_log, "show a worker's (or the supervisor's) log",
                  "Print the last lines of log_dir/WORKER.log, reading the file directly: "
                  "this works with no node running. -f keeps following it, across rotation.")
    parser.add_argument("worker", metavar="WORKER",
                        help="a worker's name, or 'supervisor'")
    parser.add_argument("-n", "--lines", type=common.non_negative_int, default=20, metavar="N",
                        help="how many of the last lines to show (default 20)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing lines as they are written; Ctrl-C ends it")


def _add_wait(parser: argparse.ArgumentParser, default_s: float) -> None:
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="return once the supervisor has accepted the request")
    parser.add_argument("--timeout", type=common.positive_seconds, default=default_s, metavar="S",
                        help=f"how long to wait (default {default_s:g} s)")


# --- status and control ---------------------------------------------------------------------


def _status(args: argparse.Namespace) -> protocol.NodeStatusReply:
    reply = common.request(args, protocol.NodeStatus())
    if not isinstance(reply, protocol.NodeStatusReply):
        raise NodeNotResponding(f"the node answered status with {reply.KIND}")
    return reply


def cmd_status(args: argparse.Namespace) -> int:
    reply = _status(args)
    workers = [{**{key: None for key in STATUS_FIELDS}, **w} for w in reply.workers]
    reticulum = gateway_status.fetch(args, workers)
    mesh = traffic.gateway_stats(args) if _gateway_running(workers) else None
    if args.json:
        common.print_json({"node": reply.node, "workers": workers, "reticulum": reticulum,
                           "security": _security(args, workers), **traffic.status_fields(mesh)})
        return common.EXIT_OK
    node = reply.node
    print(f"node {node.get('name', '?')}  pid {node.get('pid', '-')}  "
          f"up {common.format_duration(node.get('uptime_s'))}")
    rows = [[w["name"], w["state"], w["pid"] or "-", common.format_duration(w["uptime_s"]),
             w["restarts"], _percent(w["cpu_percent"]), common.format_bytes(w["rss_bytes"]),
             _note(w)] for w in workers]
    common.print_table(["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "NOTE"],
                       rows)
    if reticulum is not None:
        gateway_status.print_info(reticulum)
    for line in traffic.lines(mesh):
        print(line)
    return common.EXIT_OK


def _gateway_running(workers: list[dict[str, Any]]) -> bool:
    return any(w["name"] == catalogue.GATEWAY and w["state"] == "running" for w in workers)


def _note(worker: dict[str, Any]) -> str:
    """What a live worker says about itself, else why it last failed."""
    live = worker["state"] in ("starting", "running") and worker.get("note")
    return str(live or worker.get("last_error") or "")


def _security(args: argparse.Namespace, workers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The gateway's refusal counters, or None without a running gateway."""
    if not _gateway_running(workers):
        return None
    try:
        return cluster_cli.security_counters(args)
    except AkitaError:
        return None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cmd_worker(args: argparse.Namespace) -> int:
    config = common.load_config(args)
    allowed = config.supervisor.workers
    if args.worker not in allowed:
        return common.usage_error(f"unknown worker {args.worker!r}; this node runs: "
                                  + ", ".join(allowed))
    before = _worker_snapshot(args, args.worker) if args.wait else {}
    message = {"start": protocol.WorkerStart, "stop": protocol.WorkerStop,
               "restart": protocol.WorkerRestart}[args.verb](name=args.worker)
    reply = common.request(args, message)
    detail = reply.detail if isinstance(reply, protocol.Ok) else ""
    after = _wait_worker(args, before) if args.wait else {}
    if args.json:
        common.print_json({"ok": True, "worker": args.worker, "detail": detail,
                           "state": after.get("state"), "pid": after.get("pid")})
    elif after:
        print(f"{args.worker}: {after['state']}" + (f" (pid {after['pid']})" if after.get("pid")
                                                     else ""))
    else:
        print(f"{args.worker}: {detail or args.verb + ' requested'}")
    return common.EXIT_OK


def _worker_snapshot(args: argparse.Namespace, name: str) -> dict[str, Any]:
    for worker in _status(args).workers:
        if worker.get("name") == name:
            return dict(worker)
    return {"name": name}


def _wait_worker(args: argparse.Namespace, before: dict[str, Any]) -> dict[str, Any]:
    """Wait until the worker reached what the verb asked for; raise if it went fatal."""
    name = before["name"]
    deadline = time.monotonic() + args.timeout
    while True:
        now = _worker_snapshot(args, name)
        state = now.get("state")
        if args.verb == "stop" and state in ("stopped", "fatal"):
            return now
        if state == "fatal" and args.verb != "stop":
            why = now.get("last_error") or f"see akitactl log {name}"
            raise AkitaError(f"{name} is fatal: {why}")
        if state == "running" and (args.verb == "start" or now.get("pid") != before.get("pid")):
            return now
        if time.monotonic() > deadline:
            raise AkitaError(f"{name} did not {args.verb} within {args.timeout:g} s "
                             f"(state {state}, pid {now.get('pid')})")
        time.sleep(POLL_S)


def cmd_shutdown(args: argparse.Namespace) -> int:
    config = common.load_config(args)
    supervisor = _supervisor(config.node.run_dir)
    try:
        common.request(args, protocol.NodeShutdown())
    except NodeNotResponding:
        if supervisor is None or not _alive(supervisor):
            raise  # a reply lost to a supervisor already exiting is no failure
    if args.wait and supervisor is not None:
        deadline = time.monotonic() + args.timeout
        while _alive(supervisor):
            if time.monotonic() > deadline:
                raise AkitaError(f"the supervisor (pid {supervisor.pid}) did not exit within "
                                 f"{args.timeout:g} s")
            time.sleep(POLL_S)
    if args.json:
        common.print_json({"ok": True, "pid": supervisor and supervisor.pid,
                           "stopped": bool(args.wait)})
    else:
        print("node stopped" if args.wait else "shutdown requested")
    return common.EXIT_OK


def _supervisor(run_dir: Path) -> psutil.Process | None:
    """The supervisor named by its pid file, held so that a reused pid is not mistaken
    for it."""
    try:
        return psutil.Process(int(rundir.pid_path(run_dir).read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cmd_reload(args: argparse.Namespace) -> int:
    reply = common.request(args, protocol.NodeReload())
    detail = reply.detail if isinstance(reply, protocol.Ok) else ""
    if args.json:
        common.print_json({"ok": True, "detail": detail})
    else:
        print(detail or "config reloaded")
    return common.EXIT_OK


# --- following the bus ------------------------------------------------------------------------


def _follow(args: argparse.Namespace, topics: list[str], total_s: float | None,
            idle_s: float | None) -> Iterator[tuple[str, protocol.Message]]:
    """Messages from the bus until `total_s` passes (None: forever); raise when none came
    for `idle_s`."""
    config = common.load_config(args)
    deadline = None if total_s is None else time.monotonic() + total_s
    with common.BusFollower(config.node.run_dir, topics) as bus:
        while True:
            wait_s = idle_s if idle_s is not None else 3600.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                wait_s = min(wait_s, left)
            got = bus.next(wait_s)
            if got is not None:
                yield got
            elif idle_s is not None and (deadline is None or time.monotonic() < deadline):
                raise AkitaError(f"no {' or '.join(topics)} on the bus for {idle_s:g} s; "
                                 "is the sampler running? (akitactl status)")


def cmd_events(args: argparse.Namespace) -> int:
    seen = 0
    try:
        for topic, msg in _follow(args, args.topic, args.timeout, None):
            _print_event(topic, msg, args.json)
            seen += 1
            if args.count is not None and seen >= args.count:
                return common.EXIT_OK
    except KeyboardInterrupt:
        return common.EXIT_OK
    if args.count is not None:
        print(f"akitactl: {seen} of {args.count} messages within {args.timeout:g} s",
              file=sys.stderr)
        return common.EXIT_FAILED
    return common.EXIT_OK


def _fields(msg: protocol.Message) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}  # type: ignore[arg-type]


def _print_event(topic: str, msg: protocol.Message, as_json: bool) -> None:
    if as_json:
        line = common.json_line({"topic": topic, "kind": msg.KIND, **_fields(msg)})
    else:
        line = f"{time.strftime('%H:%M:%S')} {topic} {clean(_summary(msg), 4096)}"
    print(line, flush=True)


def _summary(msg: protocol.Message) -> str:
    if isinstance(msg, protocol.ResourceSample):
        host = msg.host
        return (f"cpu {host.get('cpu_percent')}% mem {host.get('memory', {}).get('percent')}% "
                f"{len(msg.processes)} processes")
    fields = _fields(msg)
    if isinstance(msg, protocol.LedgerCommitted):
        return f"#{fields['seq']} {common.json_line(fields['data'])}"
    return " ".join(f"{key}={value}" for key, value in fields.items()
                    if value not in (None, ""))


def cmd_top(args: argparse.Namespace) -> int:
    config = common.load_config(args)
    if catalogue.SAMPLER not in config.supervisor.workers:
        print("akitactl: this node does not run the sampler ([supervisor] workers)",
              file=sys.stderr)
        return common.EXIT_FAILED
    # Several intervals without a sample: the sampler is down (see akitactl status).
    idle_s = max(10.0, 3 * config.sampler.interval)
    clear = sys.stdout.isatty() and not args.json
    with_mesh = catalogue.GATEWAY in config.supervisor.workers
    shown = 0
    try:
        for _topic, msg in _follow(args, ["resource.sample"], None, idle_s):
            assert isinstance(msg, protocol.ResourceSample)
            mesh = traffic.gateway_stats(args) if with_mesh else None
            if args.json:
                print(common.json_line({**_fields(msg), **traffic.status_fields(mesh)}),
                      flush=True)
            else:
                _print_top(msg, config.node.name, clear)
                for line in traffic.lines(mesh):
                    print(line)
            shown += 1
            if args.count is not None and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    return common.EXIT_OK


def _print_top(msg: protocol.ResourceSample, node_name: str, clear: bool) -> None:
    host = msg.host
    memory, swap, disk = host.get("memory", {}), host.get("swap", {}), host.get("disk", {})
    disk_io, net_io = host.get("disk_io", {}), host.get("net_io", {})
    if clear:
        sys.stdout.write("\x1b[H\x1b[2J")
    load = " ".join(f"{value:.2f}" for value in host.get("load_avg", []))
    cores = " ".join(f"{value:.0f}" for value in host.get("cpu_per_core", []))
    print(f"{node_name}  {time.strftime('%H:%M:%S', time.localtime(msg.ts))}  "
          f"cpu {host.get('cpu_percent', 0):.1f}% [{cores}]  load {load}")
    print(f"mem {memory.get('percent', 0):.1f}% of {common.format_bytes(memory.get('total'))}"
          f"  swap {swap.get('percent', 0):.1f}%  disk {disk.get('percent', 0):.1f}% "
          f"of {common.format_bytes(disk.get('total'))}")
    print(f"disk read {_rate(disk_io, 'read_bytes')} write {_rate(disk_io, 'write_bytes')}  "
          f"net recv {_rate(net_io, 'bytes_recv')} sent {_rate(net_io, 'bytes_sent')}")
    print()
    rows = [[p.get("role"), p.get("pid"), _percent(p.get("cpu_percent")),
             common.format_bytes(p.get("rss_bytes")), common.format_bytes(p.get("uss_bytes")),
             p.get("open_files"), p.get("threads")]
            for p in sorted(msg.processes, key=resources.sort_key)]
    common.print_table(["ROLE", "PID", "CPU%", "RSS", "USS", "FDS", "THREADS"], rows)
    if not clear:
        print()
    sys.stdout.flush()


def _rate(counters: dict[str, Any], name: str) -> str:
    value = counters.get(f"{name}_per_s")
    return "-" if value is None else common.format_bytes(value) + "/s"


# --- log ------------------------------------------------------------------------------------


def cmd_log(args: argparse.Namespace) -> int:
    config = common.load_config(args)
    allowed = _log_names(config)
    if args.worker not in allowed:
        return common.usage_error(f"unknown worker {args.worker!r}; logs: "
                                  + ", ".join(allowed))
    path = rundir.log_path(config.node.log_dir, args.worker)
    # One open file for both parts, so no line written meanwhile is lost or shown twice.
    f = _open(path)
    if f is None and not args.follow:
        print(f"akitactl: no log for {args.worker} yet ({path})", file=sys.stderr)
        return common.EXIT_FAILED
    emit = _line_printer(args.json)
    try:
        for line in _lines_before(path, f, args.lines):
            emit(line)
        if args.follow:
            for line in follow_lines(path, f):
                emit(line)
    except KeyboardInterrupt:
        pass
    finally:
        if f is not None:
            f.close()
    return common.EXIT_OK


def _log_names(config: config_mod.Config) -> list[str]:
    names = [rundir.SUPERVISOR_LOG, *catalogue.WORKER_ORDER]
    try:
        found = (p.name.removesuffix(rundir.LOG_SUFFIX)
                 for p in config.node.log_dir.glob("*" + rundir.LOG_SUFFIX))
        names += sorted(name for name in found if name not in names)
    except OSError:
        pass
    return names


def _line_printer(as_json: bool) -> Callable[[str], None]:
    def emit(line: str) -> None:
        if as_json:
            print(common.json_line({"line": line}), flush=True)
        else:
            print(line, flush=True)

    return emit


def last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of `path`, reaching into `path.1` when the file was just rotated."""
    f = _open(path)
    try:
        return _lines_before(path, f, count)
    finally:
        if f is not None:
            f.close()


def _lines_before(path: Path, f: BinaryIO | None, count: int) -> list[str]:
    """The last `count` lines up to the end of `f` (the open `path`, or None); leaves `f`
    at that end."""
    lines = _tail(f, count) if f is not None else []
    if len(lines) < count:
        older = _open(path.with_name(path.name + ".1"))
        if older is not None:
            with older:
                lines = _tail(older, count - len(lines)) + lines
    return lines


def _tail(f: BinaryIO, count: int, block: int = 8192) -> list[str]:
    """Read backwards from the end until `count` lines are found, never the whole file."""
    end = position = f.seek(0, os.SEEK_END)
    if count == 0:
        return []
    data = b""
    while position > 0 and data.count(b"\n") <= count:
        start = max(0, position - block)
        f.seek(start)
        data = f.read(position - start) + data
        position = start
    f.seek(end)
    return data.decode(errors="replace").splitlines()[-count:]


def follow_lines(path: Path, f: BinaryIO | None,
                 poll_s: float = FOLLOW_POLL_S) -> Iterator[str]:
    """Lines appended to `path` after the position of `f` (its open file, or None when it
    does not exist yet), forever. After a rotation (the name now points to a new file, or
    the file shrank) the rest of the old file is read, then the new one from its start."""
    partial = b""
    while True:
        chunk = f.read() if f is not None else b""
        if chunk:
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            yield from (line.decode(errors="replace") for line in lines)
            continue
        if _rotated(path, f):
            if partial:
                yield partial.decode(errors="replace")
                partial = b""
            if f is not None:
                f.close()
            f = _open(path)
            continue
        time.sleep(poll_s)


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _rotated(path: Path, f: BinaryIO | None) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # between the rename and the new file: keep reading the old one
    if f is None:
        return True
    opened = os.fstat(f.fileno())
    return (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev) or now.st_size < f.tell()
