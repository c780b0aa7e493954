"""Training, fused ONNX export, parity, calibration, drift reference, retraining."""
