"""The rpcscope example service: a small shop with one gRPC method of each kind.

- :mod:`.server` — the servicer (sync and ``grpc.aio``) with configurable error and latency
  injection, and ``serve()`` helpers that start it on a port.
- :mod:`.loadgen` — a load generator driven by a traffic profile (method weights, rate,
  concurrency, a bounded duration and call count, expiring deadlines, cancellations).
- ``shop.proto`` and the generated ``shop_pb2*`` stubs (regenerate with ``regen.sh``).

``rpcscope demo`` runs the two together under rpcscope; see ``README.md`` beside this file for
running them by hand.
"""
