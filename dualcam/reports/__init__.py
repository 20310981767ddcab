"""Layer 4, reports: static HTML pages, drawn figures, the score and drift reports, and the
localization evaluation, all from stored results. No Ray.
"""
