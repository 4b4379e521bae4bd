"""cdi-live's shared code, one package per concern; imports run one way, down this list:

    physics/   Bragg CDI as pure functions on arrays: forward model, geometry, strain, metrics,
               simulated crystals, ER/HIO; and the one error for bad input. Imports nothing of ours.
    nn/        3D-CDI-NN: the network, its loss, training and inference. Imports physics.
    wire/      what crosses a boundary: messages, codecs, detector flags, files, the real data sets. Imports
               physics.
    solver/    measured volume → answer: starts, stage plans, stages, effort, trust, convergence;
               evaluation and the yardstick. Imports physics, nn, wire; never the service's state.
    state/     the service's state: the store in Redis, scheduling, retention, result files, settings.
               Imports any of the above.
    plots.py   figures (matplotlib); imports nothing of ours.

``tests/test_layout.py`` holds every package to its list. Services in ``services/`` are thin shells
around these.
"""

__version__ = "0.1.0"
