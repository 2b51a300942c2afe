"""OOD scores of the large model's pre-logit features: the Mahalanobis distance.

The softmax scores (MSP, −entropy, energy, max logit) read a method's logits;
this one reads the large model's pre-logit features x [D] (the fused forward
keeps member 0's for every split). Class means and one shared covariance are
fit on the features of a seeded subset of the TRAINING split (val stays for
the temperatures and duo weights), computed by one extra forward of the large
model alone over those rows, and every test and OOD row is scored
−min_c (x − μ_c)ᵀ Σ⁺ (x − μ_c) (`duojax.core.mahalanobis`). The score does
not depend on the logits, so it is one number for the large model, with or
without temperature.
"""

from __future__ import annotations

import numpy as np

from duojax import data
from duojax.core import mahalanobis
from duojax.eval import bank as bank_lib
from duojax.eval.inputs import OOD, TEST
from duojax.eval.members import Member

NAME = "mahalanobis"
SPLIT = "train"


def mahalanobis_scores(
  large: Member,
  dataset: data.Dataset,
  features: dict[str, np.ndarray],
  *,
  max_rows: int,
  seed: int,
  mesh,
  batch_size: int,
  skipped: dict,
) -> dict:
  """{NAME: {"scores": {test, ood: [N]}, "fit": what the report says of it}}, or {}.

  `features`: the large model's pre-logit features [N, D] per split (the
  bank's). {} when the drawn training rows miss a class, said in `skipped`
  (a class without rows has no mean; more rows, or all, give it one).
  """
  train = dataset.train.sample(max_rows, seed)  # -1: all rows
  fit_bank = bank_lib.collect(
    [large], dataset, {SPLIT: train}, mesh=mesh, batch_size=batch_size, with_features=True
  )
  rows, labels = fit_bank.features[SPLIT], fit_bank.labels[SPLIT]
  missing = int(np.sum(np.bincount(labels, minlength=dataset.num_classes) == 0))
  if missing:
    skipped["Mahalanobis"] = (
      f"the {len(labels)} training rows drawn hold no row of {missing} "
      "classes: raise config.mahalanobis_train_rows (-1: all rows)"
    )
    return {}
  model = mahalanobis.fit(rows, labels, dataset.num_classes)
  scores = {split: np.asarray(mahalanobis.score(model, features[split])) for split in (TEST, OOD)}
  return {
    NAME: {
      "scores": scores,
      "fit": {"train_rows": int(len(labels)), "rank": int(model.rank), "dim": int(rows.shape[1])},
    }
  }
