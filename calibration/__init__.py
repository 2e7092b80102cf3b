"""INT8 calibration (docs/int8.md): calibration inputs recorded along real DDIM trajectories, explicit Q/DQ ONNX
graphs (u8/s8 per channel for ONNX Runtime on CPUs, symmetric s8 for TensorRT), a per-layer sensitivity report,
and a quality gate before anything is written into the export (``hs-calibrate``)."""
