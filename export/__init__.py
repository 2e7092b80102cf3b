"""torch -> ONNX (fp32, fp16) and torch.export programs; the manifest; TensorRT engine building."""
