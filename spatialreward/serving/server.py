"""Running the app: `serve` (blocking, the CLI) and `BackgroundServer` (a uvicorn thread, for tests and benches)."""

from __future__ import annotations

import threading
import time

import uvicorn

from spatialreward.serving.app import create_app
from spatialreward.serving.config import ServeConfig


def serve(config: ServeConfig, model=None, *, log_level: str = "info") -> None:
    """Load the model, start the worker and serve until interrupted."""
    app = create_app(config, model)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=False,
                timeout_keep_alive=30)


class BackgroundServer:
    """The app on loopback in a daemon thread: ``with BackgroundServer(cfg, model) as srv: srv.url``.

    Port 0 picks a free port; ``url`` gives the one bound."""

    def __init__(self, config: ServeConfig, model=None, *, app=None, log_level: str = "warning"):
        self.app = app or create_app(config, model)
        self.config = config
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=config.host, port=config.port,
                                                     log_level=log_level, access_log=False, lifespan="on",
                                                     timeout_keep_alive=30))
        self._thread = threading.Thread(target=self._server.run, name="spatialreward-uvicorn", daemon=True)

    @property
    def service(self):
        return self.app.state.service

    @property
    def url(self) -> str:
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
