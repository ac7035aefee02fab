"""Generated protobuf and gRPC stubs of the Open Inference Protocol (``protos/inference.proto``)
and of modelserve's own services (``protos/modelserve.proto``, package ``modelserve.v1``).

Do not edit the ``*_pb2*`` files: ``python protos/generate.py`` rewrites them, and a test fails
when they differ from what it writes. The messages live in the private descriptor pool ``POOL``,
not protobuf's default pool, because tritonclient defines the same message names
(``inference.ModelInferRequest``, ...) from its own .proto file in the default pool, and protobuf
allows one definition of a name per pool.
"""

from google.protobuf import descriptor_pool as _descriptor_pool

#: The descriptor pool of modelserve's protocol messages (see the module docstring).
POOL = _descriptor_pool.DescriptorPool()

from . import inference_pb2, inference_pb2_grpc, modelserve_pb2, modelserve_pb2_grpc  # noqa: E402  (they register in POOL)

__all__ = ["POOL", "inference_pb2", "inference_pb2_grpc", "modelserve_pb2", "modelserve_pb2_grpc"]
