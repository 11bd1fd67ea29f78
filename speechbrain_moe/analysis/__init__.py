"""Evidence from trained runs: expert utilisation and specialisation
(:mod:`~speechbrain_moe.analysis.utilisation`), gradient conflict between data
groups (:mod:`~speechbrain_moe.analysis.gradients`) and their plots
(:mod:`~speechbrain_moe.analysis.plots`). The command line is
``python -m speechbrain_moe.analyze``.

Authors
 * speechbrain-moe contributors 2026
"""
