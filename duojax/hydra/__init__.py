"""Hydra ensembles: many pruned ViTs run as one (arXiv 2510.18358).

One trained Vision Transformer yields M ensemble members by pruning attention
heads. Each member scores the heads on its own random data sample with the
first-order Taylor importance |sum_batches dL/dm_h * m_h| at m = 1, where m is
the head mask of `VisionTransformer.__call__` (Michel et al., 2019), and keeps
the top-k heads of every layer. Different samples give different rankings, so
the members drop different heads and disagree where the full model is unsure.
After a short fine-tune of each member, the members are merged into one model
whose projections carry a leading member axis: XLA then runs every member in
the same batched (grouped) matmuls, so the ensemble costs about one network
of width M * k * head_dim in attention. The prediction is the mean of the
members' softmax probabilities.

    masks = member_masks(model, samples, keep=0.5)        # one sample each
    members = [prune(model, m) for m in masks]            # then fine-tune
    hydra = merge(members)                                # one module
    log_probs, out = hydra(images)                        # out["member_logits"]

`merge(..., mlp="average")` shares one MLP per layer, the mean of the
members' MLP weights: the paper's cheaper variant, no longer exactly the
ensemble of the fine-tuned members.
"""

from duojax.hydra.heads import (
  check_vit,
  head_importance,
  mask_gradients,
  member_masks,
  num_kept,
  prune,
  select_heads,
)
from duojax.hydra.merge import MLP_MODES, HydraViT, cost, merge

__all__ = [
  "MLP_MODES",
  "HydraViT",
  "check_vit",
  "cost",
  "head_importance",
  "mask_gradients",
  "member_masks",
  "merge",
  "num_kept",
  "prune",
  "select_heads",
]
