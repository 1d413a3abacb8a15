"""The worker processes: the runtime they share, and one wing per worker.

- `base`      the worker loop every worker runs (socket, poller, heartbeat, shutdown)
- `zygote`    the fork server workers and task processes start from
- `ledger/`   the only read-write database connections, and all write code
- `executor/` queue runner, task-process pool, task-process body, recovery, delegation
- `gateway/`  all Reticulum code: the instance, links, liveness, state sync, delegation,
              replication, inter-cluster messages
- `sampler`   psutil samples and alerts

A wing never imports a sibling wing (they talk over sockets); nothing here imports
`supervisor` (checked by `lint-imports`).
"""
