"""3D-CDI-NN (Chan, Cherukara et al.): one encoder, two decoders, 32³ in, shape and strain out.

    magnitude 32³ ─ Friedel pairs [log M(q), M(q) − M(−q)]
                  ─ encoder (3×3×3 conv, max-pool 32→16→8→4, widths w, 2w, 4w)
                    ├─ amplitude decoder (conv, up-sample 4→8→16→32) → sigmoid  → ρ ∈ [0, 1]
                    └─ phase decoder     (same structure)                → π·tanh → φ ∈ (−π, π)

Departures from the paper, each for a measured reason:
- the input is log-compressed inside the model (diffraction spans decades; the
  linear input made training collapse to zero output);
- the encoder also sees the Friedel difference M(q) − M(−q): the only place the
  strain shows in the data, and out of reach of 3×3×3 convolutions, which never
  compare q with −q (an earlier run without it did not learn the phase at all);
- GroupNorm + LeakyReLU instead of plain ReLU (dead units otherwise). GroupNorm,
  not BatchNorm: BatchNorm's running statistics disagreed with the training-time
  ones (10× worse amplitude error at inference); GroupNorm behaves the same in both.
Dropout 10% after each block, as in the paper.
Written with keras.layers / keras.ops only, so it runs on TensorFlow, JAX or PyTorch.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from shared.nn.fft import point_inversion

SIZE = 32
LOG_GAIN = 1000.0  # input x ∈ [0, 1] → log1p(1000 x) / log1p(1000)


@keras.saving.register_keras_serializable(package="cdi_live")
class LogCompress(layers.Layer):
    """log1p(g·x)/log1p(g): lifts the weak high-q fringes that carry the shape's detail."""

    def call(self, x):
        return log_compress(ops.maximum(x, 0.0))


@keras.saving.register_keras_serializable(package="cdi_live")
class FriedelPairs(layers.Layer):
    """(B, n, n, n) magnitude → channels [log M(q), signed log of M(q) − M(−q)].

    Friedel's law: a crystal without strain diffracts the same at q and −q, so the
    difference of Friedel mates is the strain's signature. Voxels whose mate was not
    measured (zero: frames not yet acquired in a partial scan) get no difference.
    """

    def call(self, x):
        x = ops.maximum(x, 0.0)
        mate = point_inversion(x)
        measured = ops.cast((x > 0) & (mate > 0), x.dtype)
        difference = (x - mate) * measured
        return ops.stack([log_compress(x), ops.sign(difference) * log_compress(ops.abs(difference))], axis=-1)


def log_compress(x):
    return ops.log1p(LOG_GAIN * x) / math.log1p(LOG_GAIN)


@keras.saving.register_keras_serializable(package="cdi_live")
class ScaledTanh(layers.Layer):
    """π·tanh: phase in (−π, π) without wrapping."""

    def call(self, x):
        return math.pi * ops.tanh(x)


def conv_block(x, filters, name, dropout, convs=2):
    for i in range(convs):
        x = layers.Conv3D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.GroupNormalization(groups=min(4, filters), name=f"{name}_norm{i}")(x)
        x = layers.LeakyReLU(0.1, name=f"{name}_act{i}")(x)
    return layers.Dropout(dropout, name=f"{name}_drop")(x) if dropout else x


def decoder(latent, widths, head, name, dropout):
    x = latent
    for level, filters in enumerate(reversed(widths)):
        x = conv_block(x, filters, f"{name}{level}", dropout)
        x = layers.UpSampling3D(2, name=f"{name}{level}_up")(x)
    x = layers.Conv3D(1, 3, padding="same", name=f"{name}_out")(x)
    return head(layers.Reshape((SIZE, SIZE, SIZE), name=f"{name}_squeeze")(x))


def build_model(width: int = 16, dropout: float = 0.1, friedel: bool = True) -> keras.Model:
    """The network for ``width`` filters at the first level (2w, 4w deeper).

    ``friedel=False`` builds the earlier single-channel input (weights up to w8-e14).
    """
    widths = (width, 2 * width, 4 * width)
    magnitude = keras.Input((SIZE, SIZE, SIZE), name="magnitude")
    if friedel:
        x = FriedelPairs(name="friedel_pairs")(magnitude)
    else:
        x = layers.Reshape((SIZE, SIZE, SIZE, 1), name="channel")(magnitude)
        x = LogCompress(name="log_compress")(x)
    for level, filters in enumerate(widths):  # one conv at full 32³ resolution, where it costs most
        x = conv_block(x, filters, f"enc{level}", dropout, convs=1 if level == 0 else 2)
        x = layers.MaxPooling3D(2, name=f"enc{level}_pool")(x)
    latent = conv_block(x, widths[-1], "latent", dropout)
    amplitude = decoder(latent, widths, layers.Activation("sigmoid", name="amplitude"), "amp", dropout)
    phase = decoder(latent, widths, ScaledTanh(name="phase"), "pha", dropout)
    return keras.Model(magnitude, {"amplitude": amplitude, "phase": phase}, name=f"cdi_nn_w{width}")


def encoder_layers(model):
    return [l for l in model.layers if l.name.startswith(("enc", "latent"))]


def decoder_layers(model, which: str):
    return [l for l in model.layers if l.name.startswith(which)]
