"""optimodel: one manifest turns a trained model into a fast, autoscaled Triton inference service.

The distribution holds three layers: ``optimodel.api`` (typed resource and report models, light),
``optimodel.operator`` (kopf operator, light) and ``optimodel.builder`` (torch/ONNX/TensorRT, heavy).
"""

__version__ = "0.1.0"
