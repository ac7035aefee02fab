"""The network frontends: Open Inference Protocol over gRPC and HTTP, metrics, health, the server.

The frontends only translate between the wire and :class:`modelserve.Runtime`: decode, call the
runtime, encode. Policy (routing, batching, limits) never lives in a request handler.
"""
