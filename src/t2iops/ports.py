"""A free TCP port on the loopback interface (a rendezvous, a local S3 server, a model server)."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port the system had free on 127.0.0.1 a moment ago (another process may still take it
    before it is bound again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
