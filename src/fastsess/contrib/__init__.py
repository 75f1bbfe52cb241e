"""Framework drop-ins built on the public store API; each module imports its framework.

* ``fastsess.contrib.django``: ``SESSION_ENGINE = "fastsess.contrib.django"``.
* ``fastsess.contrib.flask``: ``FastSession(app)``.
* ``fastsess.contrib.starlette``: ``SessionMiddleware`` for Starlette and FastAPI.

Nothing under ``fastsess`` outside this package imports a web framework.
"""
