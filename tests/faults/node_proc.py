"""A fault-suite node in a child process: ``python -m tests.faults.node_proc``.

Reads one JSON command per line on stdin (``{"op": ..., **args}``), answers one line on
stdout: ``{"ok": result}`` or ``{"error": "ExceptionType", "message": ...}``.  The ops
are ``LocalNode``'s methods (``tests/faults/nodes.py``), ``init`` first.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.faults.nodes import LocalNode


def main() -> None:
    node: LocalNode | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "init":
                config = cmd.pop("config")
                if "reconnect_backoff" in config:
                    config["reconnect_backoff"] = tuple(config["reconnect_backoff"])
                node = LocalNode(**cmd, **config)
                result: Any = node.wait_subscribed(5.0)
            else:
                assert node is not None, "init first"
                result = getattr(node, op)(**cmd)
            reply: dict[str, Any] = {"ok": result}
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            reply = {"error": type(exc).__name__, "message": str(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if op == "close":
            return


if __name__ == "__main__":
    main()
