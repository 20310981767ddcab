"""Layer 1, the maps and their measures: pure functions over tensors and arrays, no I/O, no Ray.

CAMs in closed form and the architectures they are defined for, the kernels (ADDK and variants),
regions of a map, localization against boxes, drift measures between two versions' maps,
classification metrics, and the numeric precision the forward passes run in.
"""
