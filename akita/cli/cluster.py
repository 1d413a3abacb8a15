"""akitactl verbs for the network: peers, clusters, state NODE, state set KEY VALUE, services.

Each asks the node's gateway through the control socket (the supervisor forwards peer.*,
cluster.*, state.* and service.* requests). NODE_ID, in every view, is a node's identity
hash in hex.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from akita import keyring
from akita.cli import common
from akita.wire import protocol


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    def verb(name: str, handler: Any, summary: str, description: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, parents=[parent], help=summary, description=description)
        common.add_json(parser)
        parser.set_defaults(func=handler)
        return parser

    verb("peers", cmd_peers, "every peer: cluster, role, load, last seen",
         "List the peers this node knows: id, name, cluster, role, seconds since last heard, "
         "load (CPU %, memory %, queued tasks) and liveness (alive or suspect).")
    verb("clusters", cmd_clusters, "clusters, members, coordinators",
         "List the clusters as this node sees them: members, coordinator and term.")
    parser = verb("state", cmd_state, "a node's merged state, or set a key of this node's",
                  "'state [NODE]' shows a node's state record from this node's merged view "
                  "(NODE: id, unique id prefix or name; default this node). "
                  "'state set KEY VALUE' sets a custom key in this node's own record, "
                  "replicated to its cluster; VALUE is JSON when it parses as JSON, else text.")
    parser.add_argument("words", nargs="*", metavar="NODE | set KEY VALUE")
    verb("security", cmd_security, "what the gateway refused from the mesh, and from whom",
         "Counters of what this node's gateway refused, per reason (garbage, oversized, "
         "impersonating, not_admitted, bad_signature, over_quota, claim_refused, bad_key), "
         "and the identities refused most.")
    keygen = sub.add_parser("keygen", parents=[parent], help="print a fresh network key",
                            description="Print a fresh random key for [security] network_key "
                            "(admission = key). To rotate without a flag day, put the new key "
                            "second on every node, then first, then drop the old one.")
    keygen.set_defaults(func=cmd_keygen)
    verb("services", cmd_services, "which nodes offer which task types and services",
         "List every task type and named service offered in the network, with the nodes "
         "offering it.")


def _short(node_id: str | None, names: dict[str, str]) -> str:
    if not node_id:
        return "-"
    name = names.get(node_id)
    return f"{name} ({node_id[:8]})" if name else node_id


def cmd_peers(args: argparse.Namespace) -> int:
    reply = common.request(args, protocol.PeerList())
    assert isinstance(reply, protocol.PeerListReply)
    if args.json:
        common.print_json({"self": reply.self_id, "peers": [
            {key: peer.get(key) for key in ("id", "name", "cluster", "role", "last_seen_s",
                                            "load", "state", "generation", "takes_work")}
            for peer in reply.peers]})
        return common.EXIT_OK
    print(f"this node: {reply.self_id}")
    rows = [[p["id"], p["name"], p["cluster"] or "-", p["role"], f"{p['last_seen_s']:.1f}s",
             _load(p["load"]), p["state"], "yes" if p.get("takes_work") else "no"]
            for p in reply.peers]
    if rows:
        common.print_table(["ID", "NAME", "CLUSTER", "ROLE", "LAST SEEN", "CPU/MEM/QUEUE",
                            "STATE", "WORK"], rows)
    else:
        print("no peers heard yet")
    return common.EXIT_OK


def _load(load: dict[str, Any]) -> str:
    return f"{load['cpu_percent']}%/{load['memory_percent']}%/{load['queue_depth']}"


def cmd_clusters(args: argparse.Namespace) -> int:
    reply = common.request(args, protocol.ClusterList())
    assert isinstance(reply, protocol.ClusterListReply)
    if args.json:
        common.print_json({"clusters": [
            {key: cluster[key] for key in ("id", "members", "coordinator", "term")}
            for cluster in reply.clusters]})
        return common.EXIT_OK
    peers = common.request(args, protocol.PeerList())
    assert isinstance(peers, protocol.PeerListReply)
    names = {p["id"]: p["name"] for p in peers.peers}
    names.setdefault(peers.self_id, "this node")
    rows = [[c["id"], _short(c["coordinator"], names), c["term"], len(c["members"]),
             ", ".join(_short(m, names) for m in c["members"])] for c in reply.clusters]
    if rows:
        common.print_table(["CLUSTER", "COORDINATOR", "TERM", "SIZE", "MEMBERS"], rows)
    else:
        print("no clusters formed yet")
    return common.EXIT_OK


def cmd_state(args: argparse.Namespace) -> int:
    words = args.words
    if words and words[0] == "set":
        if len(words) != 3:
            return common.usage_error("usage: akitactl state set KEY VALUE")
        return _state_set(args, words[1], _parse_value(words[2]))
    if len(words) > 1:
        return common.usage_error("usage: akitactl state [NODE] | state set KEY VALUE")
    reply = common.request(args, protocol.StateGet(node=words[0] if words else ""))
    assert isinstance(reply, protocol.StateReply)
    if args.json:
        common.print_json({"node": reply.node, "generation": reply.generation,
                           "version": reply.version, "data": reply.data})
        return common.EXIT_OK
    print(f"node {reply.node}  generation {reply.generation}  version {reply.version}")
    for key in sorted(reply.data):
        print(f"  {key} = {json.dumps(reply.data[key], default=common._jsonable)}")
    return common.EXIT_OK


def _state_set(args: argparse.Namespace, key: str, value: Any) -> int:
    common.request(args, protocol.StateSet(key=key, value=value))
    if args.json:
        common.print_json({"ok": True, "key": key, "value": value})
    return common.EXIT_OK


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_keygen(_args: argparse.Namespace) -> int:
    print(keyring.generate())
    return common.EXIT_OK


def security_counters(args: argparse.Namespace) -> dict[str, Any]:
    """The gateway's "security" stats (empty when it has none)."""
    reply = common.request(args, protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    found = reply.stats.get("security")
    return found if isinstance(found, dict) else {}


def cmd_security(args: argparse.Namespace) -> int:
    found = security_counters(args)
    if args.json:
        common.print_json(found)
        return common.EXIT_OK
    refused = found.get("refused", {})
    print(f"refused from the mesh: {found.get('total', 0)}")
    common.print_table(["REASON", "COUNT"], [[r, n] for r, n in refused.items()])
    offenders = found.get("top_offenders", [])
    if offenders:
        print()
        common.print_table(["IDENTITY", "REFUSED"], [[o["id"], o["refused"]]
                                                     for o in offenders])
    return common.EXIT_OK


def cmd_services(args: argparse.Namespace) -> int:
    reply = common.request(args, protocol.ServiceList())
    assert isinstance(reply, protocol.ServiceListReply)
    if args.json:
        common.print_json({"services": reply.services})
        return common.EXIT_OK
    rows = [[s["name"], s["kind"], len(s["nodes"]), ", ".join(s["nodes"])]
            for s in reply.services]
    if rows:
        common.print_table(["NAME", "KIND", "NODES", "OFFERED BY"], rows)
    else:
        print("no services known")
    return common.EXIT_OK
