"""One app process for the two-process tests: ``python -m tests.contrib.serve FRAMEWORK REDIS_URL PREFIX``.

Serves the test app of FRAMEWORK (django, flask or starlette) on a free loopback port
with a ``ClusteredRedisStore`` on REDIS_URL under PREFIX, prints ``PORT <n>`` once it
listens, and runs until killed.  ``/stats`` answers this node's cache counters.
"""

from __future__ import annotations

import json
import socket
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def django_app(url: str, prefix: str) -> object:
    import django
    from django.conf import settings

    from .conftest import DJANGO_SETTINGS

    settings.configure(
        INSTALLED_APPS=["django.contrib.sessions"], DATABASES={}, USE_TZ=True,
        FASTSESS_REDIS_URL=url, FASTSESS_KEY_PREFIX=prefix, **DJANGO_SETTINGS,
    )
    django.setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def flask_app(url: str, prefix: str) -> object:
    from flask import Flask

    from .test_flask import make_app

    app: Flask = make_app(FASTSESS_REDIS_URL=url, SESSION_KEY_PREFIX=prefix)

    @app.get("/stats")
    def stats() -> str:
        return json.dumps(app.session_interface.store.cache_stats()._asdict())  # type: ignore[attr-defined]

    return app


def starlette_app(url: str, prefix: str) -> object:
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fastsess.asyncio import ClusteredRedisStore

    from .test_starlette import make_app

    store = ClusteredRedisStore(url=url, prefix=prefix)
    app = make_app(store=store)

    async def stats(request: object) -> JSONResponse:
        return JSONResponse(store.cache_stats()._asdict())

    app.router.routes.append(Route("/stats", stats))
    return app


def main() -> None:
    framework, url, prefix = sys.argv[1:4]
    port = free_port()
    if framework == "starlette":
        import uvicorn

        app = starlette_app(url, prefix)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        print(f"PORT {port}", flush=True)
        server.run()
        return
    wsgi = django_app(url, prefix) if framework == "django" else flask_app(url, prefix)
    httpd = make_server("127.0.0.1", port, wsgi, handler_class=QuietHandler)  # type: ignore[arg-type]
    print(f"PORT {port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
