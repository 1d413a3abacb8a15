"""Every format that leaves a process, each declared once.

- `protocol`  every frame on the node's local ZeroMQ sockets: a frozen dataclass per
              `noun.verb` kind, one `decode_frame()` that raises `ProtocolError`
- `mesh`      what crosses Reticulum: announce app_data, probe and leave packets, and the
              helpers (`pack`, `WireError`) the link request bodies in `akita.mesh` use
"""
