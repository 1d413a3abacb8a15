"""The supervisor: one per node; owns the worker processes, the control socket and the bus.

- `main`       the `akita-supervisor` entry point
- `mainloop`   the `Supervisor` event loop: one poller over every socket, pipe and signal
- `table`, `process`, `commands`   the process table, each worker's state machine, verbs
- `control`, `control_thread`, `bus`, `status`   control socket, event bus, status board
- `logs`, `pidlock`, `signals`     per-worker logs, the pid lock, signal flags
- `demo`       `akita-demo`: several nodes on loopback, for a first look
"""
