"""The lean generator: numpy plus one inference backend (ONNX Runtime, TensorRT or torch).

Nothing here imports torch at module level or anything from the training side; the torch backend
imports torch lazily when it is chosen (tests/test_dependencies.py enforces both).
"""
