"""Accuracy and NLL of single training checkpoints (`evaluate.py --workdirs`)."""

from __future__ import annotations

from typing import Sequence

from duojax import config_lib, data
from duojax.models import functional
from duojax.parallel import distributed, sharding
from duojax.train import checkpoint, steps


def accuracy_of_workdirs(
  workdirs: Sequence[str], split_name: str, data_dir: str | None, batch_size: int
) -> dict[str, dict]:
  """{workdir: model name, step, accuracy, NLL, count} on `split_name` of its own data."""
  mesh = sharding.make_mesh()
  results = {}
  for workdir in workdirs:
    model, meta = checkpoint.load_model(workdir, sharding=sharding.replicated(mesh))
    dataset = data.load_dataset_of(config_lib.complete_config(meta["config"]), data_dir)
    checkpoint.check_fits_data(meta, dataset.image_shape, dataset.num_classes, where=workdir)
    graphdef, params, batch_stats = functional.split_model(model)
    # The model's own normalisation, crop and filter (older checkpoints: the
    # data set's statistics; `load_model` gives their config's crop and filter).
    inputs = meta.get("input", {"mean": dataset.mean, "std": dataset.std})
    if "crop_fraction" in inputs:
      dataset = data.read_as(dataset, inputs["crop_fraction"], inputs["interpolation"])
    eval_step = steps.make_eval_step(
      graphdef, mesh=mesh, image_stats=(inputs["mean"], inputs["std"])
    )
    batches = data.eval_batches(
      getattr(dataset, split_name),
      global_batch_size=batch_size,
      sharding=sharding.batch_sharding(mesh),
    )
    result = steps.evaluate_batches(eval_step, params, batch_stats, batches)
    results[workdir] = {"model_name": meta["model_name"], "step": meta["step"], **result}
    if distributed.is_main_process():
      print(
        f"{workdir}: {meta['model_name']} step {meta['step']}: {split_name} accuracy "
        f"{result['accuracy']:.4f}, NLL {result['nll']:.4f} ({result['count']} images)"
      )
  return results
