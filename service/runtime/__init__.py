"""What runs a model: the immutable served model (onnxruntime session, card, input checks)
and the dynamic batcher."""
