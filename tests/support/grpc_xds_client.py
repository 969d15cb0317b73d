"""A proxyless gRPC client process: grpcio's own xDS client, configured by GRPC_XDS_BOOTSTRAP.

Run as a script. Reads one JSON command per line on stdin and answers one JSON line:
  {"target": "xds:///svc.ns.svc.cluster.local:7070", "method": "/cilia.test.Echo/Call", "n": 10,
   "metadata": [["x-version", "v2"]], "timeout": 5}
  -> {"results": ["grpc-a", "grpc-b", ..., "ERR UNAVAILABLE: ..."], "channels": {target: 1}}
Each target gets one channel, created on its first command and kept for the life of the process, so a
test sees config changes reach a channel that is never re-created (`channels` counts creations).
"""

from __future__ import annotations

import json
import sys

import grpc


def main() -> None:
    channels: dict[str, grpc.Channel] = {}
    created: dict[str, int] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        target = cmd["target"]
        if target not in channels:
            channels[target] = grpc.insecure_channel(target)
            created[target] = created.get(target, 0) + 1
        call = channels[target].unary_unary(cmd.get("method", "/cilia.test.Echo/Call"))
        results = []
        for _ in range(int(cmd.get("n", 1))):
            try:
                body = call(b"", metadata=[tuple(m) for m in cmd.get("metadata", ())] or None,
                            timeout=float(cmd.get("timeout", 5)))
                results.append(json.loads(body)["backend"])
            except grpc.RpcError as exc:
                results.append(f"ERR {exc.code().name}: {exc.details()}")
        print(json.dumps({"results": results, "channels": created}), flush=True)
    for ch in channels.values():
        ch.close()


if __name__ == "__main__":
    main()
