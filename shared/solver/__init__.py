"""The solver: from a measured volume to an answer one can trust, in stages.

    starts       where the projections begin (network, flat, twin, random)
    plans        the refined stage as a plan (``REFINE_PLAN``, ``PREVIEW_PLAN``) and ``converge``, which runs one
    refinement   the AD polish through the forward model
    fullgrid     the full-grid stage at the detector's resolution
    stages       measured volume → NN stage → refined stage → full-grid stage
    effort       more runs for scans left uncertain
    trust        χ_free, the floors, the verdict and its reason, the uncertainty
    convergence  when more frames would not change the answer
    evaluation   ``cdi-live evaluate``: families, yardsticks, tables
    yardstick    cohere-core from PyPI, run as its users run it

Imports ``shared.physics``, ``shared.nn``, ``shared.wire`` and ``shared.plots``; never ``shared.state``
(the solver runs the same in a CLI, a test or a worker).
"""
