"""The gRPC edge: the Open Inference Protocol's ``inference.GRPCInferenceService`` (KServe v2)
on its own port, calling the same data plane as HTTP (``service.dataplane``)."""
