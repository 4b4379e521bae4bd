"""One optimisation step with the active Keras backend's own automatic differentiation.

Keras 3 has no backend-neutral gradient call, so this is the one place that
names the backends: TensorFlow (GradientTape, the whole step compiled with
tf.function), JAX (jax.value_and_grad, jit-compiled) and PyTorch (autograd).
"""

from __future__ import annotations

import keras


def descent_step(loss_fn, optimizer, variables):
    """``step(*data) -> (aux, values_before)``: evaluate ``loss_fn(params, *data) -> (scalar, aux)``
    at the current variables, then apply one optimizer update to them."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def tf_step(*data):
            before = [tf.identity(v.value) for v in variables]
            with tf.GradientTape() as tape:
                params = [v.value for v in variables]
                value, aux = loss_fn(params, *data)
            optimizer.apply(tape.gradient(value, params), variables)
            return aux, before

        return tf_step
    if backend == "jax":
        import jax

        grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

        def jax_step(*data):
            before = [v.value for v in variables]
            (_, aux), grads = grad_fn(before, *data)
            optimizer.apply(grads, variables)
            return aux, before

        return jax_step
    if backend == "torch":
        import torch

        def torch_step(*data):
            before = [v.value.detach().clone().requires_grad_(True) for v in variables]
            value, aux = loss_fn(before, *data)
            optimizer.apply(list(torch.autograd.grad(value, before)), variables)
            return aux.detach(), [b.detach() for b in before]

        return torch_step
    raise RuntimeError(f"automatic differentiation is not wired for the {backend!r} backend")
