"""The builder (``optimodel build``): compress, compile, verify and benchmark a model, then write a
Triton model repository and a ``BuildReport``.

Heavy dependencies (torch, onnxruntime, tensorrt) are imported inside the steps that need them,
so importing this package costs nothing. Entry point: ``optimodel.builder.cli:main``; the
pipeline lives in ``optimodel.builder.pipeline``; see docs/builder.md.
"""
