"""torch -> ONNX (fp32, fp16) and TorchScript; the manifest; TensorRT engine building."""
