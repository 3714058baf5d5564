"""The model: architectures, pretrained weights, training, calibration, prediction."""
