"""Evidence from trained runs: expert utilisation and specialisation
(:mod:`~analysis.utilisation`), gradient conflict between data
groups (:mod:`~analysis.gradients`) and their plots
(:mod:`~analysis.plots`). The command line is
``python -m analysis`` (:mod:`analysis.cli`).

Authors
 * speechbrain-moe contributors 2026
"""
