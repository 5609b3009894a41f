"""Compute kernels, installed as `fastwavenet.kernels`: arrays in, arrays out. Nothing here reads files or configs."""
