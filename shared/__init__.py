"""cdi-live shared code: physics, simulator, phase retrieval, network, messages.

Everything here is a pure function on arrays (no I/O, no Redis) unless the module
name says otherwise (``files``); services in ``services/`` are thin shells around it.
"""

__version__ = "0.1.0"
