"""The config schemas: evaluation keys, defaults, validation, and the mirrored names."""

import ml_collections
import pytest

from duojax import config_lib, errors, eval_config_lib
from duojax.data import batches
from duojax.eval import pipeline, schema
from duojax.eval import sections as eval_sections


def _eval_config(**overrides):
  config = eval_config_lib.base_eval_config()
  config.large = "runs/large"
  for key, value in overrides.items():
    config[key] = value
  return config


def test_mirrored_names_match_their_homes():
  """config_lib stays import-light by mirroring names; the mirrors must not drift."""
  assert config_lib._AUGMENTATIONS == batches.AUGMENTATIONS


def test_the_eval_schema_is_the_core_keys_and_each_sections_own():
  """Every section declares its keys; none declares a core key or another's."""
  core = set(schema._core_keys().keys())
  owners = {}
  for section in eval_sections.load(eval_sections.available()):
    for key in eval_sections.defaults(section):
      assert key not in core and key not in owners, key
      owners[key] = eval_sections.name(section)
  assert set(schema.base_eval_config().keys()) == core | set(owners)
  assert owners["bootstrap"] == "paired" and owners["hydra_mlp"] == "hydra"
  # The first spelling keeps working for config files written against it: the same schema.
  for name in ("base_eval_config", "complete_eval_config", "validate_eval", "EVAL_DATA_KEYS"):
    assert getattr(eval_config_lib, name) is getattr(schema, name), name


def test_an_old_eval_config_file_gets_every_missing_key_at_its_default():
  old = ml_collections.ConfigDict({"large": "a", "sidekick": "b", "solver": "optax"})
  config = eval_config_lib.complete_eval_config(old)
  base = eval_config_lib.base_eval_config()
  assert set(config.keys()) == set(base.keys())
  assert (config.large, config.sidekick, config.solver) == ("a", "b", "optax")
  for key in set(base.keys()) - {"large", "sidekick", "solver"}:
    assert config[key] == base[key], key
  eval_config_lib.validate_eval(config)


def test_an_unknown_eval_key_is_a_one_line_error():
  with pytest.raises(errors.ConfigError, match="unknown evaluation config key 'bootstrapp'"):
    eval_config_lib.complete_eval_config(ml_collections.ConfigDict({"large": "a", "bootstrapp": 3}))


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"large": ""}, "config.large must name the large model's training workdir"),
    ({"large": "runs/a,runs/b"}, "config.large='runs/a,runs/b' names 2 members; it takes one"),
    ({"sidekick": "runs/a,runs/b"}, "(more go in config.sidekicks)"),
    ({"solver": "bfgs"}, "config.solver='bfgs'; valid: jaxopt, optax"),
    ({"batch_size": 0}, "config.batch_size must be > 0, got 0"),
    ({"bootstrap": -1}, "config.bootstrap must be >= 0, got -1"),
    ({"mc_dropout_rate": 1.0}, "config.mc_dropout_rate must be in (0, 1), got 1.0"),
    (
      {"mahalanobis_train_rows": -2},
      "config.mahalanobis_train_rows must be a number of rows, -1 (all) or 0 (off), got -2",
    ),
    ({"ood": "cifar"}, "config.ood='cifar'; valid: 'mnist' (embedded), 'tfds:NAME[:SPLIT]'"),
    ({"shifts": "blur,snow"}, "config.shifts has unknown ['snow']"),
    ({"hydra_mlp": ""}, "config.hydra_mlp=''; valid: a comma list of grouped, average"),
    ({"sections": "methods,tables"}, "config.sections has unknown ['tables']"),
    ({"sections": "methods,paired,methods"}, "config.sections lists a section twice"),
    ({"sections": "hydra,methods"}, "'hydra' reads the scores of 'methods'"),
    ({"gatekeeper": "runs/gk"}, "config.gatekeeper: Gatekeeper sidekicks are compared"),
    ({"conformal_alphas": "0.1,1.5"}, "config.conformal_alphas must be numbers in (0, 1)"),
    ({"conformal_alphas": "x"}, "config.conformal_alphas must be numbers in (0, 1)"),
    ({"conformal_methods": "lac,cqr"}, "config.conformal_methods='lac,cqr'; valid"),
    ({"abstention_risks": "0.01,2"}, "config.abstention_risks must be numbers in (0, 1)"),
    ({"abstention_risks": "x"}, "config.abstention_risks must be numbers in (0, 1)"),
    ({"abstention_delta": 0.0}, "config.abstention_delta must be a number in (0, 1)"),
    ({"sidekick_budget": -1.0}, "config.sidekick_budget must be >= 0"),
    ({"sidekicks": "runs/s2"}, "config.sidekicks / config.sidekick_pool need config.sidekick"),
  ],
)
def test_eval_validation_names_the_problem(overrides, message):
  with pytest.raises(errors.ConfigError) as error:
    eval_config_lib.validate_eval(_eval_config(**overrides))
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_sections_run_only_when_the_config_gives_their_inputs():
  names = lambda config: [eval_sections.name(s) for s in pipeline.active_sections(config)]
  assert names(_eval_config()) == ["methods", "paired", "conformal", "abstention"]
  assert names(_eval_config(bootstrap=0, conformal_alphas="", abstention_risks="")) == ["methods"]
  assert names(_eval_config(sidekick="s", cascade=True)) == [
    "methods",
    "paired",
    "cascade",
    "sidekicks",
    "conformal",
    "abstention",
  ]
  assert names(_eval_config(sidekick="s", hydra="h0,h1")) == [
    "methods",
    "paired",
    "hydra",
    "sidekicks",
    "conformal",
    "abstention",
  ]
  assert names(_eval_config(sidekick="s", cascade=True, hydra="h", sections="methods,hydra")) == [
    "methods",
    "hydra",
  ]


def test_every_section_renders_nothing_without_its_results():
  """A section left out (or skipped) adds no tables to a report."""
  results = {"methods": {}, "reference": "large+TS", "large_flops": 1.0}
  for section in eval_sections.load(eval_sections.available()):
    lines = section.markdown(results)
    assert (eval_sections.name(section) == "methods") == bool(lines)


def test_complete_training_config_fills_keys_a_checkpoint_predates():
  saved = config_lib.base_config().to_dict()
  del saved["loss"], saved["linear_probe_steps"]
  saved["lr"] = 0.5
  config = config_lib.complete_config(saved)
  assert config.loss == "ce" and config.linear_probe_steps == 0 and config.lr == 0.5
  config_lib.validate(config)


def test_imagenet_recipe_names_the_labelled_held_out_split_and_a_crop_size():
  import importlib.util

  spec = importlib.util.spec_from_file_location("imagenet_duo", "configs/imagenet_duo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for arg in (
    "vit_b16",
    "resnet18",
    "model=vit_b16,weights=w.safetensors,probe=100",
    "model=resnet18,weights=w.safetensors,dataset=my_set,test_split=test",
  ):
    config = module.get_config(arg)
    config_lib.validate(config)
    assert config.test_split in ("validation", "test") and config.val_split == ""
    assert config.model.image_size == 224 and config.augment == "rrc,flip"
    if "weights" in arg:  # the transfer recipe: SGD, no decay, a fresh head
      assert config.init_weights == "w.safetensors" and config.init_head == "fresh"
      assert config.optimizer == "sgd" and config.weight_decay == 0
    # Sizes are chosen from the data (duojax.train.sizing), within the ImageNet ones.
    assert config.batch_size == config.val_size == config.warmup_steps == config_lib.AUTO
    assert config.auto_max.batch_size == 512 and config.auto_max.val_size == 10_000
    fine_tune = "weights" in arg
    assert config.auto_max.total_steps == (20_000 if fine_tune else 0) and config.total_steps == -1


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"augment": "rrc,crop"}, "two ways of cropping"),
    ({"augment": "rrc,zoom"}, "unknown 'zoom'"),
    ({"rrc_scale": (0.5, 0.2)}, "rrc_scale must be (low, high)"),
    ({"rrc_scale": (0.5, 1.5)}, "high end must be <= 1"),
    ({"crop_fraction": 0.0}, "crop_fraction must be in (0, 1]"),
    ({"data_workers": -2}, "data_workers must be -1"),
    ({"val_split": "test"}, "must differ from train_split and test_split"),
    ({"test_split": ""}, "config.test_split must name"),
  ],
)
def test_data_keys_are_validated(overrides, message):
  config = config_lib.base_config()
  config.update(overrides)
  with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(config)
