"""The ledger worker: the only process that writes the node's database.

Every process sends `ledger.append` frames (through `akita.ledger.client.LedgerClient`) to
``run_dir/ledger.sock``. The worker drains whatever is waiting (up to `[ledger] max_batch`
events), writes it in one transaction (`workers.ledger.store.LedgerStore`), and only then
acknowledges each frame and publishes each committed event on the bus as `ledger.committed`
under the event's kind as topic. It signs a checkpoint of the feed head every
`checkpoint_events` events or `checkpoint_interval` seconds while events arrive, and at
shutdown. On restart the store recovers the head and the senders' refs from the database.

It also holds the other nodes' feeds (`workers.ledger.replicas`): it answers `ledger.heads`,
serves `ledger.range` bundles of any feed held, and stores the bundles of `ledger.ingest`
that verify. A replicated bundle is published once on the bus as `ledger.replicated`, never
event by event, so subscribers to `task.` and the like only ever see this node's events.
Refused forgeries and detected forks are recorded in this node's own feed
(`ledger.forgery_refused`, `ledger.fork_detected`).
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import time

import apsw
import msgpack
import zmq

from akita import catalogue, identity
from akita.ledger import chain
from akita.ratelog import LogLimiter
from akita.wire import protocol
from workers.base import Request, Worker
from workers.ledger import store
from workers.ledger.replicas import ReplicaStore, ReplicationError
from workers.ledger.store import Append, LedgerStore, Row, Verdict, WalCheckpointer, parse_events

log = logging.getLogger(__name__)

MAX_FRAMES_PER_DRAIN = 5_000
PRUNE_INTERVAL_S = 3600.0
# With no event waiting for a checkpoint there is nothing to time but the hourly prune: the
# worker wakes for its heartbeats only, and a commit pulls the next tick in (`_commit`).
IDLE_TICK_S = 60.0
WAL_SIZE_LIMIT_BYTES = 64 << 20
# An I/O error with less room than this left where the ledger lives is a full disk too
# (SQLite reports some ENOSPC writes as SQLITE_IOERR rather than SQLITE_FULL).
LOW_SPACE_BYTES = 1 << 20
ERROR_LOG_INTERVAL_S = 10.0
MAX_CACHED_TOPICS = 1024


class LedgerWorker(Worker):
    """Group-committing writer of this node's feed."""

    name = catalogue.LEDGER

    def setup(self) -> None:
        node = identity.load_or_create(self.config.node.data_dir)
        path = chain.db_path(self.config)
        self.conn = store.open_writer(path)
        self.store = LedgerStore(self.conn, node)
        self.replicas = ReplicaStore(self.conn, self.store)
        # WAL checkpoints happen off the commit path (see WalCheckpointer); the WAL file is cut
        # back to this size when it restarts, after a burst made it large.
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self.conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}").fetchall()
        self.checkpointer = WalCheckpointer(path)
        # Set after wal_autocheckpoint, which would replace it.
        self.conn.set_wal_hook(self.checkpointer.on_wal)
        self.checkpointer.start()
        self.settings = self.config.ledger
        self._batch: list[Append] = []
        self._batch_events = 0
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
        self._bus_prefix = protocol.ledger_committed_prefix(node.node_id)
        self._topics: dict[str, tuple[bytes, bytes]] = {}
        self.commits = 0
        self.committed_events = 0
        self.data_dir = path.parent
        self._commit_errors = LogLimiter(log, ERROR_LOG_INTERVAL_S)
        self._housekeeping_errors = LogLimiter(log, ERROR_LOG_INTERVAL_S)
        self.disk_full = False

    def teardown(self) -> None:
        log.info("%d events written in %d commits; %d bad frames", self.committed_events,
                 self.commits, self.bad_frames)
        try:
            if self.store.checkpoint():
                log.info("final checkpoint at seq %d", self.store.checkpoint_seq)
        except apsw.Error as exc:
            log.error("final checkpoint failed: %s", exc)
        self.checkpointer.stop()
        self.conn.close()

    def tick(self) -> None:
        now = time.monotonic()
        try:
            if self.store.checkpoint_due(self.settings.checkpoint_interval, now):
                self.store.checkpoint()
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_INTERVAL_S
                self.store.prune_sources(time.time())
        except apsw.Error as exc:
            self._housekeeping_errors.log(logging.ERROR, "ledger housekeeping failed (will "
                                          "retry): %s", self._describe(exc)[1])
            self.tick_interval_s = Worker.tick_interval_s
            return
        self.tick_interval_s = min(self._checkpoint_in_s(now), self._next_prune - now,
                                   IDLE_TICK_S)

    def _checkpoint_in_s(self, now: float) -> float:
        """Seconds until the interval checkpoint is due; IDLE_TICK_S with nothing to sign."""
        if self.store.chain.seq <= self.store.checkpoint_seq:
            return IDLE_TICK_S
        return max(0.0, self.store.checkpoint_at + self.settings.checkpoint_interval - now)

    # --- requests ---------------------------------------------------------------------------

    def _on_request(self) -> None:
        """Drain the socket into one batch, then commit it: the group commit.

        Overrides the base's reader, which answers each frame on its own; every frame still
        goes through the base's decoding and dispatch (errors, ping, `handle`)."""
        assert self.router is not None
        recv = self.router.recv_multipart
        limit = self.settings.max_batch
        # A drain allocates a few objects per event (decoded maps, rows) and frees them all
        # after the commit, with no reference cycle among them; left on, the cyclic collector
        # would scan the growing batch again and again (a fifth of the writer's time).
        gc.disable()
        try:
            for _ in range(MAX_FRAMES_PER_DRAIN):
                try:
                    frames = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._dispatch(frames)
                if self._batch_events >= limit:
                    break  # the poller fires again at once for the rest
            if self._batch:
                self._commit()
        finally:
            gc.enable()

    def handle(self, request: Request) -> protocol.Message | None:
        msg = request.message
        if isinstance(msg, protocol.LedgerAppend):
            return self._collect(request, msg)
        if isinstance(msg, protocol.LedgerHead):
            own = self.store.chain
            return protocol.LedgerHeadReply(feed=own.feed, seq=own.seq, hash=own.hash)
        if isinstance(msg, (protocol.LedgerHeads, protocol.LedgerRange, protocol.LedgerIngest)):
            try:
                return self._replication(msg)
            except apsw.Error as exc:
                code, why = self._describe(exc, msg.KIND)
                self._commit_errors.log(logging.ERROR, "%s", why)
                return protocol.Error(code=code, message=why)
        return super().handle(request)

    # --- replication ------------------------------------------------------------------------

    def _replication(self, msg: protocol.Message) -> protocol.Message:
        """Answer ledger.heads, ledger.range or ledger.ingest at once: each reads or writes
        in its own transaction, beside the group commits of this node's own feed."""
        if isinstance(msg, protocol.LedgerRange):
            try:
                served = self.replicas.serve_range(msg.feed, msg.after_seq,
                                                   max_bytes=msg.max_bytes, limit=msg.limit,
                                                   with_key=msg.with_key)
            except ReplicationError as exc:
                return protocol.Error(code=exc.code, message=str(exc))
            return protocol.LedgerRangeReply(feed=msg.feed, bundle=served.bundle,
                                             first_seq=served.first_seq,
                                             last_seq=served.last_seq, head_seq=served.head_seq)
        if isinstance(msg, protocol.LedgerIngest):
            return self._ingest(msg)
        heads = self.replicas.heads()
        return protocol.LedgerHeadsReply(
            own=self.store.chain.feed,
            feeds={h.feed: [h.seq, h.hash, h.signed_seq] for h in heads},
            forked=[h.feed for h in heads if h.forks])

    def _ingest(self, msg: protocol.LedgerIngest) -> protocol.Message:
        result = self.replicas.ingest(msg.bundle, msg.sender)
        if result.record is not None:
            kind, data = result.record
            events = parse_events([protocol.ledger_event(kind, time.time(), data)])
            # Committed with the batch this drain ends with (fire-and-forget: nobody waits).
            self._batch.append(Append("ledger", 0, 1, events, False))
            self._batch_events += 1
        if result.stored:
            self.publish(protocol.LedgerReplicated.KIND, protocol.LedgerReplicated(
                feed=result.feed, sender=msg.sender, first_seq=result.first_seq,
                last_seq=result.head_seq))
        return protocol.LedgerIngestReply(
            feed=result.feed, outcome=result.outcome.value, stored=result.stored,
            head_seq=result.head_seq, head_hash=result.head_hash, detail=result.detail)

    def _collect(self, request: Request, msg: protocol.LedgerAppend) -> protocol.Message | None:
        if msg.ref < 0 or msg.base < 1:
            self.bad_frames += 1
            return protocol.Error(code="bad_frame", message="ref must be >= 0 and base >= 1")
        try:
            events = parse_events(msg.events)
        except ValueError as exc:
            self.bad_frames += 1
            return protocol.Error(code="bad_event", message=str(exc))
        self._batch.append(Append(msg.source, msg.ref, msg.base, events, msg.ack, request))
        self._batch_events += len(events)
        return None

    # --- the commit -------------------------------------------------------------------------

    def _commit(self) -> None:
        batch, self._batch, self._batch_events = self._batch, [], 0
        try:
            rows = self.store.commit(batch, checkpoint_events=self.settings.checkpoint_events)
        except apsw.Error as exc:
            # Nothing was written or acknowledged: senders resend (every 2 s), and the store
            # is unchanged, so the first resend after space returns commits.
            code, why = self._describe(exc)
            self.disk_full = code == "disk_full"
            self._commit_errors.log(logging.ERROR, "ledger commit of %d frames failed: %s",
                                    len(batch), why)
            for append in batch:
                if append.ack:
                    append.reply_to.fail(code, why)
            return
        if self.disk_full:
            self.disk_full = False
            log.warning("ledger writes again after %d failed commits: space is back in %s",
                        self._commit_errors.total, self.data_dir)
            self._commit_errors.total = 0
        self.commits += 1
        self.committed_events += len(rows)
        if rows:
            self.tick_within(self._checkpoint_in_s(time.monotonic()))
        for append in batch:
            if append.ack:
                append.reply_to.reply(protocol.LedgerAcked(
                    source=append.source, ref=append.answer_ref, last_seq=append.last_seq))
            if append.verdict is Verdict.GAP:
                log.debug("gap from %s: got ref %d, holding %d", append.source, append.ref,
                          append.answer_ref)
        self._publish(rows)

    def _describe(self, exc: apsw.Error, what: str = "commit") -> tuple[str, str]:
        """(error code, text for the sender) of a failed write; a full disk says so."""
        try:
            stat = os.statvfs(self.data_dir)
            free = stat.f_bavail * stat.f_frsize
        except OSError:
            free = -1
        low = 0 <= free < LOW_SPACE_BYTES
        if isinstance(exc, apsw.FullError) or (isinstance(exc, apsw.IOError) and low):
            return "disk_full", (f"{os.strerror(errno.ENOSPC).lower()} where the ledger lives "
                                 f"({self.data_dir}: {max(free, 0)} bytes free); the node "
                                 "records again by itself once space is freed")
        return "ledger_unavailable", f"{what} failed: {exc}"

    def _publish(self, rows: list[Row]) -> None:
        """Each committed event on the bus, built from the stored bytes (no re-encoding).

        This runs for every event, so it avoids what is slow per call in pyzmq and msgpack:
        the Python wrapper around send (it only adds routing ids and groups, which a PUB never
        uses, yet costs as much as the send itself), a Packer per call (packb), and encoding
        the same few topics again and again."""
        assert self.publisher is not None
        send = super(zmq.Socket, self.publisher).send
        prefix, k_ts = self._bus_prefix, protocol.LEDGER_COMMITTED_KEYS[0]
        pack = _PACK
        topics = self._topics
        try:
            for _feed, seq, ts, kind, blob, _prev, _hash in rows:
                topic = topics.get(kind) or self._topic(kind)
                send(topic[0], _MORE)
                send(b"".join((prefix, pack(seq), k_ts, pack(ts), topic[1], blob)), _NOBLOCK)
        except zmq.Again:
            pass  # the bus is full: subscribers miss events, the ledger has them all

    def _topic(self, kind: str) -> tuple[bytes, bytes]:
        """(bus topic, the frame's bytes from the event_kind key to the data value) of
        `kind`, cached: a node writes a few dozen kinds, but the cache stays bounded."""
        if len(self._topics) >= MAX_CACHED_TOPICS:
            self._topics.clear()
        _k_ts, k_kind, k_data = protocol.LEDGER_COMMITTED_KEYS
        topic = self._topics[kind] = (kind.encode(), k_kind + _PACK(kind) + k_data)
        return topic


_PACK = msgpack.Packer(use_bin_type=True).pack
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
