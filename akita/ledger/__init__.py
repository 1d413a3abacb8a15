"""The ledger as every process sees it: read-only, verifiable.

- `chain`    the hash chain and signed checkpoints, verification, read-only queries
             (`akitactl ledger`, recovery of a restarted worker)
- `client`   `LedgerClient`: append events to the ledger worker, acknowledged once durable
- `bundles`  self-verifying ranges of a feed for replication, and fork evidence

Only `workers.ledger` writes the database (its schema lives there too).
"""
