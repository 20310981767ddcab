"""Layer 5, the Ray layer: joining a cluster, the Ray Data scoring pipeline, the Ray Train loop and
its driver. The only code that imports Ray, and only inside functions, so that ``import dualcam``
works where Ray is absent.
"""
