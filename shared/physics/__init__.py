"""Physics of Bragg CDI as pure functions on arrays, and ``errors.InputError`` for input a caller can
correct. Imports nothing of ours outside ``shared.physics``: everything else stands on it.

Importing it makes FFTW do the FFTs it was measured faster at (``fftw``: single-precision transforms
of power-of-two axes up to 128), for every ``scipy.fft`` call in the process.
"""

from shared.physics import fftw as _fftw

_fftw.install()
