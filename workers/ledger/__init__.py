"""The ledger worker's wing: the one writer of the node's database.

- `worker`    `LedgerWorker`: drains appends, group-commits, acknowledges, publishes
- `store`     the schema, the read-write connection, group commit, dedup, checkpoints
- `replicas`  other nodes' feeds: verified ingest, ranges served, fork proofs
"""
