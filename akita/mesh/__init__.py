"""The mesh's pure rules: no sockets, no Reticulum, no clock of their own.

- `cluster`      deterministic cluster formation: seats, rendezvous hashing, coordinators,
                 terms, `accepts()` fencing
- `rounds`       one node's round of those rules: its seat, its term, which claims it
                 takes (bounded, checked against what it saw itself)
- `formation`    one node's side of those rules (its seat, its term, the operator's view)
- `state`        signed last-writer-wins state records: merge, digest, deltas
- `delegation`   whom to hand queued tasks to, timers, and the task link bodies
- `replication`  ledger replication among mates: what to pull, and its link bodies
- `messaging`    inter-cluster messages: routing, retries, dedup, and their link bodies

`workers.gateway` wires these to Reticulum; the tests drive them directly.
"""
