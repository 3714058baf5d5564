"""A clinic (site) of its own: the unfamiliar-image warning, its operating point, drift."""
