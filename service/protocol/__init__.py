"""Wire protocols: v1 (friendly JSON) and v2 (Open Inference Protocol, JSON and binary
tensors) codecs between request bytes and validated numpy batches, and the wire schemas."""
