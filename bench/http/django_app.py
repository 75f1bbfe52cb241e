"""Django app of the HTTP benchmark (served by gunicorn; see bench/http_bench.py).

``BENCH_SESSION`` picks the session layer: ``fastsess`` (fastsess.contrib.django),
``usual`` (Django's cache session backend on django-redis), ``none`` (no session
middleware) or ``null`` (Django's session middleware on a backend that stores nothing,
``null_session.py``: the cost every backend pays).  ``REDIS_URL`` is the Redis both stores use.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

MODE = os.environ.get("BENCH_SESSION", "fastsess")
REDIS_URL = os.environ["REDIS_URL"]

_sessions = {
    "fastsess": {"SESSION_ENGINE": "fastsess.contrib.django", "FASTSESS_REDIS_URL": REDIS_URL},
    "usual": {
        "SESSION_ENGINE": "django.contrib.sessions.backends.cache",
        "CACHES": {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL}},
    },
    "null": {"SESSION_ENGINE": "null_session"},  # Django's session machinery, no storage (the floor)
    "none": {},
}[MODE]

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    SECRET_KEY="bench-only secret, not for production",
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.sessions"] if MODE != "none" else [],
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"] if MODE != "none" else [],
    DATABASES={},
    **_sessions,
)


def login(request: HttpRequest) -> JsonResponse:
    """Create the session the load generator then sends back."""
    if MODE != "none":
        request.session["user"] = "ada"
        request.session["n"] = 0
    return JsonResponse({"user": "ada"})


def read(request: HttpRequest) -> JsonResponse:
    """Read the session, change nothing."""
    user = request.session.get("user") if MODE != "none" else "ada"
    return JsonResponse({"user": user})


def write(request: HttpRequest) -> JsonResponse:
    """Read and change the session: the store writes it back."""
    n = 0
    if MODE != "none":
        n = request.session["n"] = request.session.get("n", 0) + 1
    return JsonResponse({"n": n})


urlpatterns = [path("login", login), path("read", read), path("write", write)]
application = get_wsgi_application()
