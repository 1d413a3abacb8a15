"""The executor's wing: the durable task queue and the pool that runs it.

- `worker`      `ExecutorWorker`: submits, queue, results, cancellation
- `pool`        task processes forked from the executor's own zygote, timeouts, blame
- `taskproc`    the body of a task process
- `recovery`    the queue rebuilt from the ledger at start
- `replies`     answers deferred until a result is durable, and result watchers
- `delegation`  the executor's side of delegation: leases, tasks run for peers
"""
