"""INT8 calibration (DESIGN §5): not built yet.

Will record calibration inputs along DDIM trajectories and write explicit Q/DQ ONNX graphs that ONNX
Runtime runs on the CPU and TensorRT builds into INT8 engines.
"""
