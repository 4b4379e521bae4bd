"""FFTW (pyFFTW) for the transforms where it was measured faster than scipy's own pocketfft.

Measured on the 2-core development machine (2026-12-04, ``benchmarks/fft_backend.py``): batched
complex64 transforms of 32³ 3.1× faster, 64³ 1.9×, 128³ 1.6×; but 201×256×220 (a detector-size
region, not a power of two) 0.47× at FFTW's default planning. So the rule: single precision, every
transformed axis a power of two of at most ``LARGEST``; everything else stays with scipy.

``install()`` makes this scipy.fft's global backend, once per process (``phasing`` calls it when it is
imported, so a process that phases, and only one, pays pyFFTW's import), and every ``scipy.fft`` call
in it takes the rule without changing its code; scipy's own backend answers what the rule
declines. Without pyFFTW installed nothing changes. FFTW's plans are cached per thread (pyFFTW's
interface cache: without it, planning each call made FFTW slower than scipy).
"""

from __future__ import annotations

import os

import numpy as np
import scipy.fft as sfft

LARGEST = 128  # longest axis measured faster
KEEPALIVE_S = 1.0  # a cached plan (and its arrays) unused this long is freed: a refinement iteration is ≤ 0.3 s
SINGLE = (np.dtype(np.complex64), np.dtype(np.float32))
TAKEN = frozenset({"fftn", "ifftn", "rfftn", "irfftn"})  # the n-dimensional transforms phasing calls

try:
    import pyfftw
    import pyfftw.interfaces.cache as _cache
    import pyfftw.interfaces.scipy_fft as _fftw
except ImportError:  # optional at run time: scipy's FFT then does everything
    pyfftw = None

_cache_pid = None  # the process whose cache thread runs (a forked child starts its own)


def transformed_lengths(method: str, x, s, axes) -> tuple[int, ...]:
    """The lengths of the axes a call transforms (for irfftn, the real output's)."""
    axes = range(x.ndim) if axes is None else axes
    if s is not None:
        return tuple(s)
    lengths = [x.shape[a] for a in axes]
    if method.startswith("irfft"):
        lengths[-1] = 2 * (lengths[-1] - 1)
    return tuple(lengths)


def takes(method: str, x, s=None, axes=None) -> bool:
    """Whether FFTW does this call: single precision, every transformed axis a power of two ≤ LARGEST."""
    if not isinstance(x, np.ndarray) or x.dtype not in SINGLE:
        return False
    return all(0 < n <= LARGEST and n & (n - 1) == 0 for n in transformed_lengths(method, x, s, axes))


class Backend:
    """A scipy.fft backend (uarray protocol): FFTW where ``takes`` says so, else NotImplemented (scipy's)."""

    __ua_domain__ = "numpy.scipy.fft"

    @staticmethod
    def __ua_function__(method, args, kwargs):
        global _cache_pid
        name = method.__name__
        if name not in TAKEN or not args:
            return NotImplemented
        s = kwargs.get("s", args[1] if len(args) > 1 else None)
        axes = kwargs.get("axes", args[2] if len(args) > 2 else None)
        if not takes(name, args[0], s, axes):
            return NotImplemented
        if _cache_pid != os.getpid():
            _cache.disable()
            _cache.enable()
            _cache.set_keepalive_time(KEEPALIVE_S)
            _cache_pid = os.getpid()
        return getattr(_fftw, name)(*args, **kwargs)


_installed = False


def install() -> bool:
    """FFTW for the transforms it does faster (``takes``), scipy for the rest; True where pyFFTW is there."""
    global _installed
    if pyfftw is None:
        return False
    if not _installed:
        sfft.set_global_backend(Backend)
        sfft.register_backend("scipy")
        _installed = True
    return True
