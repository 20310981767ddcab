"""Layer 6, synthetic data and the runs over it: chest-X-ray-like images with known feature boxes in
two scenario designs (overlap, salient-shared), and the demo and experiment that train, score and
evaluate on them end to end.
"""
