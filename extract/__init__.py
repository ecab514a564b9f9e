"""Stage one: run frozen 2D teachers over sampled frames and write soft targets to sharded HDF5."""
