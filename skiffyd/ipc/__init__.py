"""IPC: the daemon's Rep0/Pub0 server and the blocking client library for UIs.

* :mod:`skiffyd.ipc.codec`  — frames ↔ ``ipc_schema`` Structs, no sockets
* :mod:`skiffyd.ipc.server` — :class:`~skiffyd.ipc.server.IpcServer` (trio)
* :mod:`skiffyd.ipc.client` — :class:`~skiffyd.ipc.client.DaemonClient`,
  :class:`~skiffyd.ipc.client.EventSubscriber` (blocking, no trio)

Nothing is imported here, so that a UI importing the client does not pay for
trio.
"""
