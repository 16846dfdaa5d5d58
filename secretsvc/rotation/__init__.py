"""Rotation: the rotators that produce values and the scheduler that runs them."""
