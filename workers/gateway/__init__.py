"""The gateway's wing: everything the node does over Reticulum.

Only this wing imports RNS (checked by `lint-imports`), and within it only `rnsnode` and
`links` do; the formats are in `akita.wire.mesh`, the pure rules in `akita.mesh`:

- `rnsconfig`  the Reticulum config written from [reticulum]
- `peers`      the peer table: (generation, seq) ordering, tombstones, silence timeouts
- `probes`     SWIM-style probe scheduling: direct, indirect, suspect
- `discovery`  when to announce, what an announce does, when to re-form clusters
- `sync`       the signed LWW state records and their deltas
- `recovery`   boot generation, and what a restarted gateway reads back from the ledger
- `views`      the JSON shapes of peers / clusters / state / services
- `node`       `NetNode`: all of the above wired together on the gateway's loop
- `replicate`  ledger replication among cluster mates (`akita.mesh.replication`: its pure
               rules and request bodies; `ledger_requests`: async requests to the own
               ledger worker)
- `intercluster`  messages to another cluster's subscribers through its coordinator, end to
               end acknowledged and retried (`akita.mesh.messaging`: its pure rules and link
               bodies)
- `delegate`   tasks handed to cluster mates and their outcomes brought home (`delegate_peer`:
               the peer's side; `akita.mesh.delegation`: choice of peer, timers, link bodies;
               `executor_requests`: async requests to the own executor; `spillover`: a
               saturated cluster's tasks to another cluster's coordinator)

Building on the gateway (delegation, ledger replication, inter-cluster messages): serve a
path with ``net.links.serve(f"{channel}/verb", handler)`` and ask a peer with
``net.links.request(peer_id, path, data, on_response, on_failure, timeout_s)`` (see
`links`); name paths after the channel they belong to (task_channel, ledger_channel,
inter_cluster_channel). Who is where: ``net.formation.own_cluster()``, ``cluster_mates()``,
``net.formation.local.term``, ``net.formation.assignment`` (every cluster and its
coordinator), ``net.table.peers`` (load, liveness), ``net.sync.store`` (every node's record:
task_types, capabilities, queue_depth, resources). Events: ``net.peer_joined_hooks``,
``net.peer_left_hooks`` (also called when a peer restarted), ``net.peer_updated_hooks``
(each announce of a known peer), ``net.cluster_hooks``.
"""
