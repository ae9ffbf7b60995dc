"""nnserve's inference service: FastAPI + onnxruntime over the model repository (no torch)."""

__version__ = "0.1.0"
