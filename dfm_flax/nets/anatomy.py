"""What a fitted Fourier net does inside: the scale of each layer's hidden values.

A collapse (docs/recipe.md) is visible here before and after it
shows in the loss: hidden values grow until they vary by whole periods across a few
pixels, the next layer's cos/sin features become noise over the image, and the net can
only draw the mean colour. `layer_scales` measures, per layer:

  std        spread of the layer's outputs over the image;
  max_abs    largest output;
  per_pixel  RMS change of the outputs from one pixel to the next (Jacobian of the
             outputs with respect to the coordinates, times the pixel pitch); a layer
             whose features are to mean anything needs this well under 1 (a period);
  weight_norm  Euclidean norm of the layer's (a, b).

`python -m studies.hidden_scale WORKDIR ...` prints them for finished runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dfm_flax.nets import fourier


def layer_scales(params, coords: jax.Array, pixel_pitch: tuple[float, float],
                 points: int = 2**16, jacobian_points: int = 256,
                 method: str = "auto") -> list[dict]:
  """Per layer: std, max_abs, per_pixel and weight_norm (module docstring).

  pixel_pitch: the coordinate distance between neighbouring pixels along x1 (columns) and
  x2 (rows). std and max_abs are taken over `points` of the coords and the Jacobian at
  `jacobian_points`, each evenly spread: all the pixels of a large photograph at once
  would not fit in memory (a layer's product form holds 2^(m/2) x n values per pixel).
  """
  pitch = jnp.asarray(pixel_pitch, coords.dtype)
  hidden = fourier.hidden_values(params, coords[::max(1, len(coords) // points)], method)
  jac = jax.vmap(jax.jacfwd(lambda xy: fourier.hidden_values(params, xy, method)))(
      coords[::max(1, len(coords) // jacobian_points)])
  return [{"std": float(jnp.std(h)), "max_abs": float(jnp.max(jnp.abs(h))),
           "per_pixel": float(jnp.sqrt(jnp.mean((j * pitch) ** 2))),
           "weight_norm": float(np.sqrt(np.sum(np.square(a)) + np.sum(np.square(b))))}
          for h, j, (a, b) in zip(hidden, jac, params)]
