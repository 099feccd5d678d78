"""ONNX export and parity checks, TensorRT engine build and runtime."""
