"""A tiny Django app for the tests: URLconf and views (sync and async)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


def anon(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": request.session.get("user"), "count": request.session.get("count", 0)})


def incr(request: HttpRequest) -> JsonResponse:
    request.session["count"] = request.session.get("count", 0) + 1
    return JsonResponse({"count": request.session["count"]})


def login(request: HttpRequest) -> JsonResponse:
    request.session.cycle_key()
    request.session["user"] = request.GET["user"]
    return JsonResponse({"user": request.session["user"]})


def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("bye")


def append(request: HttpRequest) -> JsonResponse:
    items = request.session.setdefault("items", [])
    items.append(request.GET["item"])
    request.session.modified = True
    return JsonResponse({"items": items})


async def aread(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": await request.session.aget("user"), "count": await request.session.aget("count", 0)})


async def aincr(request: HttpRequest) -> JsonResponse:
    count = await request.session.aget("count", 0) + 1
    await request.session.aset("count", count)
    return JsonResponse({"count": count})


async def alogin(request: HttpRequest) -> JsonResponse:
    await request.session.acycle_key()
    await request.session.aset("user", request.GET["user"])
    return JsonResponse({"user": request.GET["user"]})


def stats(request: HttpRequest) -> JsonResponse:
    from fastsess.contrib.django import get_store

    return JsonResponse(get_store().cache_stats()._asdict())


urlpatterns = [
    path("stats", stats),
    path("anon", anon),
    path("read", read),
    path("incr", incr),
    path("login", login),
    path("logout", logout),
    path("append", append),
    path("aread", aread),
    path("aincr", aincr),
    path("alogin", alogin),
]
