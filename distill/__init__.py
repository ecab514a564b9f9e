"""Stage two: train 3D students against the cached teacher targets."""
