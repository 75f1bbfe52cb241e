"""asyncio session stores (see ``fastsess.stores`` for the shared contract)."""
