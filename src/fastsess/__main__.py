"""``python -m fastsess``: the same as the ``fastsess`` command."""

from .cli import main

main()
