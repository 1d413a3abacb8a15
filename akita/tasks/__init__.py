"""Tasks as every process sees them.

- `registry`  `@akita.task`, command tasks, argument checking, `current_task()`
- `queue`     the task book: states, the priority queue, rebuilt from ledger events
- `offer`     which queued tasks a node may hand to a peer, and how many

The executor's process side (pool, task-process body) is in `workers.executor`.
"""
