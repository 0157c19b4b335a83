"""Whether a server answers, asked once with a short timeout and no retries: asked before a hub download or a
wandb sync, so that a machine without a network gets one line at once instead of minutes of retries."""
from __future__ import annotations

import socket
from urllib.parse import urlparse


def unreachable(url: str, timeout: float) -> str | None:
    """Why `url`'s host accepts no TCP connection within `timeout` seconds ('host:port: reason'), or None."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return f"{url} is not a URL"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{parsed.hostname}:{port}: {err.strerror or err}"
    return None
