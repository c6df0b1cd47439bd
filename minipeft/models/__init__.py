"""Real pretrained models read from their shipped files into the one transformer's φ."""
