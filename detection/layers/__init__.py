"""Layers of the detection models that are not models themselves: deformable convolution."""
