"""Training: one model's fit and calibration (fitting), an ensemble of them (ensemble), and the
run that tracks it in MLflow and writes the stage's outputs (run)."""
