"""The model: architectures, pretrained weights, training, calibration, ensembles."""
