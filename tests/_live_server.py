"""A real uvicorn server on 127.0.0.1 in a thread, serving the repository's default models,
for the client and ``mcdrop predict`` tests (tests/test_client.py, tests/test_predict_cli.py).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@contextmanager
def live_server(api_key: str | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Serve ``models/`` on a free loopback port; yields the base URL."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(models_dir=MODELS_DIR, api_key=api_key, log_level="warning"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
