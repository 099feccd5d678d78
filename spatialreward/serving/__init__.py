"""The reward server: dynamic batching over one `RewardModel`, a JSON API, the SpatialReward-protocol endpoint
behind a restricted unpickler, Prometheus metrics, and a Ray Serve deployment of the same routes.

    from spatialreward.serving import ServeConfig, create_app, serve, RewardClient
"""

from spatialreward.serving.client import RewardClient, RewardServerError
from spatialreward.serving.config import ServeConfig

__all__ = ["BackgroundServer", "RewardClient", "RewardServerError", "ServeConfig", "create_app", "serve"]


def __getattr__(name: str):
    # The app pulls in FastAPI / uvicorn; keep `import spatialreward.serving` light for clients.
    if name == "create_app":
        from spatialreward.serving.app import create_app

        return create_app
    if name in ("serve", "BackgroundServer"):
        from spatialreward.serving import server

        return getattr(server, name)
    raise AttributeError(f"module 'spatialreward.serving' has no attribute {name!r}")
