"""A clinic (site) of its own: its operating point and head, drift, calibration."""
