"""akita-demo: N nodes on loopback in a temporary directory, and a live view of them.

    akita-demo --nodes 6 --cluster-size 3

Each node is a real supervisor with its ledger and gateway, its own config and data in the
demo directory and its own Reticulum instance; node 0 listens on a free loopback TCP port
(a hub that forwards), the others dial it. With `--radio SF9` (or SF7 … SF12, SF7-500) the
nodes share an emulated LoRa channel instead (`supervisor.radio`), and the view shows each
node's share of time on air and the channel's utilisation. The view shows every node's peers, cluster, role
and the clusters as each node sees them, refreshed every second, until Ctrl-C, which stops
every node (SIGTERM, then SIGKILL for anything that lingers) and removes the directory.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from akita import config as config_mod
from akita import transport
from akita.errors import AkitaError
from akita.mesh import airtime
from akita.wire import protocol
from supervisor import radio

STOP_TIMEOUT_S = 15.0
QUERY_TIMEOUT_S = 1.0


@dataclass
class DemoNode:
    index: int
    root: Path
    config_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"node{self.index}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for loopback meshes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(node: DemoNode, hub_port: int, args: argparse.Namespace,
                 radio_socket: Path | None = None) -> None:
    if radio_socket is not None:
        bitrate = int(airtime.profile(args.radio).bitrate)
        link = (f"pipe = {sys.executable} -m supervisor.radio attach --socket {radio_socket} "
                f"--node {node.name}\npipe_bitrate = {bitrate}")
    else:
        link = (f"tcp_listen = 127.0.0.1:{hub_port}" if node.index == 0
                else f"tcp_connect = 127.0.0.1:{hub_port}")
    node.root.mkdir(parents=True)
    node.config_path.write_text(f"""\
[node]
data_dir = data
run_dir = run
log_dir = log
name = {node.name}

[supervisor]
workers = {args.workers}

[cluster]
cluster_size = {args.cluster_size}
announce_interval = {args.announce_interval}
discovery_interval = {max(0.2, args.announce_interval / 2)}
peer_timeout = {args.peer_timeout}

[reticulum]
auto_interface = no
shared_instance = own   # its own loopback network, even beside the host's rnsd
{link}

[metrics]
listen =
""")


def start(node: DemoNode) -> None:
    with open(node.root / "supervisor.out", "ab") as log:
        # A session of its own: the terminal's Ctrl-C is for the demo, which stops the nodes.
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.main", "-c", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def query(node: DemoNode) -> dict[str, Any] | None:
    """The node's peers and clusters, or None while it is not answering."""
    try:
        run_dir = config_mod.load(node.config_path).node.run_dir
        with transport.Requester(run_dir, transport.CONTROL) as req:
            peers = req.request(protocol.PeerList(), QUERY_TIMEOUT_S)
            clusters = req.request(protocol.ClusterList(), QUERY_TIMEOUT_S)
    except AkitaError:
        return None
    assert isinstance(peers, protocol.PeerListReply)
    assert isinstance(clusters, protocol.ClusterListReply)
    return {"self": peers.self_id, "peers": peers.peers, "clusters": clusters.clusters}


def render(nodes: list[DemoNode], views: list[dict[str, Any] | None], started: float,
           air: dict[str, Any] | None = None) -> str:
    names = {view["self"]: node.name for node, view in zip(nodes, views) if view}
    title = f"akita-demo: {len(nodes)} nodes, {time.monotonic() - started:.0f} s"
    lines = [title + "  (Ctrl-C stops them all)", ""]
    rows = [["NODE", "ID", "CLUSTER", "ROLE", "PEERS", "TERM"] + (["AIRTIME"] if air else [])]
    for node, view in zip(nodes, views):
        airtime = []
        if air is not None:
            figures = air["nodes"].get(node.name)
            airtime = [f"{figures['airtime_percent']:.2f} %" if figures else "-"]
        if view is None:
            rows.append([node.name, "-", "-", "starting", "-", "-", *airtime])
            continue
        own = next((c for c in view["clusters"] if view["self"] in c["members"]), None)
        role = "-" if own is None else ("coordinator" if own["coordinator"] == view["self"]
                                        else "member")
        rows.append([node.name, view["self"][:8], own["id"] if own else "-", role,
                     str(len(view["peers"])), str(own["term"]) if own else "-", *airtime])
    lines.extend(_table(rows))
    if air is not None:
        lines.append(f"channel {air['profile']['bitrate']:.0f} bit/s, busy "
                     f"{air['utilisation_percent']:.2f} % of {air['elapsed_s']:.0f} s")
    answering = [view for view in views if view]
    shapes = {_shape(view) for view in answering}
    placed = {m for shape in shapes for _cid, members, _coord in shape for m in members}
    lines.append("")
    if len(answering) == len(nodes) and len(shapes) == 1 and len(placed) == len(nodes):
        lines.append("every node agrees on these clusters:")
    else:
        lines.append("nodes do not agree yet; node0 sees:" if answering else "no node answers yet")
    if answering:
        for cluster in answering[0]["clusters"]:
            members = ", ".join(names.get(m, m[:8]) for m in cluster["members"])
            lines.append(f"  {cluster['id']}  coordinator {names.get(cluster['coordinator'], '?')}"
                         f"  term {cluster['term']}  members: {members}")
    return "\n".join(lines)


def _shape(view: dict[str, Any]) -> frozenset[tuple[str, frozenset[str], str]]:
    return frozenset((c["id"], frozenset(c["members"]), c["coordinator"])
                     for c in view["clusters"])


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]


def stop_all(nodes: list[DemoNode]) -> None:
    """SIGTERM every supervisor, wait, then SIGKILL whatever of its tree is left."""
    trees: list[psutil.Process] = []
    for node in nodes:
        if node.proc is None or node.proc.poll() is not None:
            continue
        try:
            trees.extend(psutil.Process(node.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        node.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for node in nodes:
        if node.proc is None:
            continue
        try:
            node.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(5)
    for proc in trees:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="akita-demo", description="Start N Akita nodes on loopback and watch them form "
        "clusters. Ctrl-C stops them all and removes their directory.")
    parser.add_argument("--nodes", type=int, default=6, help="how many nodes (default 6)")
    parser.add_argument("--cluster-size", type=int, default=3, help="nodes per cluster")
    parser.add_argument("--radio", metavar="PROFILE",
                        help="share an emulated LoRa channel instead of loopback TCP: SF7, "
                        "SF7-500, SF8 … SF12 (125 kHz unless named)")
    parser.add_argument("--announce-interval", type=float, metavar="S",
                        help="default 1 s, or 20 s with --radio")
    parser.add_argument("--peer-timeout", type=float, metavar="S",
                        help="default 5 s, or 60 s with --radio")
    parser.add_argument("--workers", default="ledger, gateway",
                        help="workers per node (default: ledger, gateway)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="stop by itself after S seconds (for scripts)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the demo directory (configs, logs, ledgers) afterwards")
    args = parser.parse_args(argv)
    if args.radio is not None:
        try:
            airtime.profile(args.radio)
        except ValueError as exc:
            parser.error(f"--radio: {exc}")
    if args.announce_interval is None:
        args.announce_interval = 20.0 if args.radio else 1.0
    if args.peer_timeout is None:
        args.peer_timeout = 60.0 if args.radio else 5.0
    if not 1 <= args.nodes <= 100:
        parser.error("--nodes must be from 1 to 100")
    if not 1 <= args.cluster_size <= 1000:
        parser.error("--cluster-size must be from 1 to 1000")
    if args.announce_interval < 0.5 or args.peer_timeout < 0.5:
        parser.error("--announce-interval and --peer-timeout must be at least 0.5 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="akita-demo-", dir="/tmp"))
    nodes = [DemoNode(i, root / f"n{i}", root / f"n{i}" / "akita.ini")
             for i in range(args.nodes)]
    hub_port = free_port()
    interactive = sys.stdout.isatty()
    started = time.monotonic()
    channel: subprocess.Popen[bytes] | None = None
    radio_socket = root / "radio.sock" if args.radio else None
    try:
        if radio_socket is not None:
            channel = _start_channel(radio_socket, args.radio)
        for node in nodes:
            write_config(node, hub_port, args, radio_socket)
        start(nodes[0])
        if radio_socket is None:
            _wait_listening(hub_port, nodes[0])
        for node in nodes[1:]:
            start(node)
        _watch(nodes, started, interactive, args.duration, radio_socket)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        print("\nstopping every node…", flush=True)
        stop_all(nodes)
        if channel is not None:
            channel.terminate()
            channel.wait(10)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _wait_listening(port: int, hub: DemoNode, timeout_s: float = 30.0) -> None:
    """The hub first: a node that dials before it listens waits ~5 s to retry."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if hub.proc is not None and hub.proc.poll() is not None:
            raise SystemExit(f"akita-demo: node0 exited; see {hub.root / 'supervisor.out'}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"akita-demo: node0 did not listen on port {port} within {timeout_s:g} s")


def _start_channel(path: Path, profile_name: str) -> subprocess.Popen[bytes]:
    with open(path.parent / "radio.out", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.radio", "channel", "--socket",
                                 str(path), "--profile", profile_name],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 10.0
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"akita-demo: the radio channel did not start; see "
                             f"{path.parent / 'radio.out'}")
        time.sleep(0.05)
    return proc


def _air(radio_socket: Path | None) -> dict[str, Any] | None:
    if radio_socket is None:
        return None
    try:
        return radio.query_stats(str(radio_socket))
    except (OSError, SystemExit, ValueError):
        return None


def _watch(nodes: list[DemoNode], started: float, interactive: bool,
           duration: float | None, radio_socket: Path | None = None) -> None:
    last = ""
    while duration is None or time.monotonic() - started < duration:
        screen = render(nodes, [query(node) for node in nodes], started, _air(radio_socket))
        if interactive:
            sys.stdout.write("\x1b[H\x1b[2J" + screen + "\n")
            sys.stdout.flush()
        elif screen.split("\n", 1)[1] != last:  # a pipe gets each change once
            print(screen + "\n", flush=True)
            last = screen.split("\n", 1)[1]
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
