"""Django on fastsess, in one file: ``python examples/django_app.py``
(needs ``pip install 'fastsess[django]'``).

Open http://127.0.0.1:8000/ : a session counter; /login?user=ada logs in (with a new
session key), /logout logs out.  Uses $REDIS_URL, or starts a private Redis.
"""

from __future__ import annotations

import os
import sys

from _redis import redis_url
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    SECRET_KEY=os.environ.get("SECRET_KEY", "change-me: a long random secret"),
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.sessions"],
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
    DATABASES={},
    SESSION_ENGINE="fastsess.contrib.django",
    FASTSESS_REDIS_URL=redis_url(),
)


def index(request: HttpRequest) -> JsonResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"user": request.session.get("user"), "visits": request.session["visits"]})


def login(request: HttpRequest) -> JsonResponse:
    request.session.cycle_key()  # new key at login: no session fixation (django.contrib.auth.login does this too)
    request.session["user"] = request.GET.get("user", "ada")
    return JsonResponse({"user": request.session["user"]})


def logout(request: HttpRequest) -> JsonResponse:
    request.session.flush()  # deletes the session in Redis; the cookie is dropped
    return JsonResponse({"user": None})


urlpatterns = [path("", index), path("login", login), path("logout", logout)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    port = os.environ.get("PORT", "8000")
    execute_from_command_line([sys.argv[0], "runserver", "--noreload", f"127.0.0.1:{port}", *sys.argv[1:]])
