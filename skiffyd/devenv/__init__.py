"""Development environment: the real things skiffyd's tests and demo run against.

Nothing here is used by the daemon itself. Each piece is a real program in a
throwaway directory, started as a child process and stopped by its own PID:

* :mod:`skiffyd.devenv.synapse` — a Synapse homeserver on 127.0.0.1
  (its own virtual environment, ``.synapse-venv``).
* :mod:`skiffyd.devenv.secret_service` — gnome-keyring's Secret Service in a
  private D-Bus session, so the real keyring of the person running the tests
  is never touched.
* :mod:`skiffyd.devenv.peer` — the other side of a conversation: matrix-nio's
  ``AsyncClient``, a client nobody here wrote, behind a blocking API.
* :mod:`skiffyd.devenv.instance` — ``skiffyd run`` with isolated XDG
  directories, and the ``skiffyd`` CLI pointed at it.
* :mod:`skiffyd.devenv.demo` — all of the above wired together
  (``python -m skiffyd.devenv.demo``).
"""
