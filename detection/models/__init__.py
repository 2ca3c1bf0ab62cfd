"""Detection models: FIBER fusion backbones, detectors, heads and losses."""
