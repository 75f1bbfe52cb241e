"""Sans-I/O cores: logic with no sockets, no threads started, no event loop and no ``import redis``.

The drivers (``fastsess.cluster``, the stores) do the I/O and call into these.
"""
