"""What identifies a model: its name, overrides, class count and input shape.

A `ModelSpec` is stored in every checkpoint's meta and rebuilds the model
from it alone (`ModelSpec.from_meta(meta).build()`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from duojax import models


def with_input_geometry(overrides: dict, image_shape: tuple[int, int, int]) -> dict:
  """`get_model` overrides: the config's, plus the input geometry of the data."""
  height, width, channels = image_shape
  merged = {"image_size": height if height == width else (height, width), "in_channels": channels}
  merged.update(dict(overrides))
  return merged


def build_model(
  model_name: str, overrides: dict, num_classes: int, image_shape: tuple[int, int, int], seed: int
) -> nnx.Module:
  model = models.get_model(
    model_name, num_classes, rngs=nnx.Rngs(seed), **with_input_geometry(overrides, image_shape)
  )
  # Fail here, with the model's own one-line message, if the data's images do
  # not fit the model (e.g. a ViT built for another size, wrong channel count).
  nnx.eval_shape(lambda m: m(jnp.zeros((1, *image_shape), jnp.float32)), model)
  return model


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What identifies a trained model, stored in checkpoint meta."""

  model_name: str
  model_overrides: dict
  num_classes: int
  image_shape: tuple[int, int, int]

  def as_meta(self) -> dict:
    return {
      "model_name": self.model_name,
      "model_overrides": dict(self.model_overrides),
      "num_classes": self.num_classes,
      "image_shape": list(self.image_shape),
    }

  @classmethod
  def from_meta(cls, meta: dict) -> "ModelSpec":
    return cls(
      meta["model_name"],
      dict(meta["model_overrides"]),
      int(meta["num_classes"]),
      tuple(meta["image_shape"]),
    )

  def build(self, seed: int = 0) -> nnx.Module:
    return build_model(
      self.model_name, self.model_overrides, self.num_classes, self.image_shape, seed
    )
