"""Evaluates trained checkpoints: `python evaluate.py --workdirs DIR[,DIR2...]`.

Reports each model's accuracy and NLL on the chosen split of the dataset it
was trained on.
"""

import json

from absl import flags

from duojax import checkpoint, cli, data, train_lib

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Training workdirs to evaluate.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate on.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (default: the training one).")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Global evaluation batch size.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")
flags.mark_flags_as_required(["workdirs"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _BATCH.value <= 0:
    raise ValueError(f"--batch_size must be > 0, got {_BATCH.value}")
  mesh = train_lib.make_mesh()
  results = {}
  for workdir in _WORKDIRS.value:
    model, meta = checkpoint.load_model(workdir)
    config = meta["config"]
    dataset = data.load_dataset(config["dataset"], _DATA_DIR.value or config["data_dir"],
                                val_size=config["val_size"], split_seed=config["split_seed"])
    if tuple(dataset.image_shape) != tuple(meta["image_shape"]) or \
        dataset.num_classes != meta["num_classes"]:
      raise checkpoint.CheckpointError(
          f"{workdir!r} was trained on {meta['image_shape']} images with {meta['num_classes']} "
          f"classes, the data has {list(dataset.image_shape)} and {dataset.num_classes}")
    graphdef, params, batch_stats = train_lib.split_model(model)
    eval_step = train_lib.make_eval_step(graphdef, mesh=mesh)
    split = getattr(dataset, _SPLIT.value)
    batches = data.eval_batches(split, global_batch_size=_BATCH.value, mean=dataset.mean,
                                std=dataset.std, sharding=train_lib.batch_sharding(mesh))
    result = train_lib.evaluate_batches(eval_step, params, batch_stats, batches)
    results[workdir] = {"model_name": meta["model_name"], "step": meta["step"], **result}
    print(f"{workdir}: {meta['model_name']} step {meta['step']}: {_SPLIT.value} accuracy "
          f"{result['accuracy']:.4f}, NLL {result['nll']:.4f} ({result['count']} images)")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
