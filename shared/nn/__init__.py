"""3D-CDI-NN: network, physics-aware loss, training and inference. Imports ``shared.physics`` and
``shared.plots`` (the training curve), nothing else of ours.

Keras (and TensorFlow behind it) is loaded here, once, with the process's native
stderr pointed elsewhere: on some CPUs TensorFlow's C++ start-up notices (oneDNN,
the absl preamble) ignore TF_CPP_MIN_LOG_LEVEL, and a CLI error must stay one line.
What the import writes is replayed if it fails.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_keras_quietly():
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        import keras  # noqa: F401
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import keras  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_import_keras_quietly()
