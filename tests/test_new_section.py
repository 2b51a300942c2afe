"""A new report section is one module plus its name in `config.sections`.

The module below is written to a folder of its own and joined to the section
package's search path: no edit to the schema, a central list or the member
parser. Its key reaches the config (and so `--config.KEY=`), its check runs
with the others, its place after the section it reads is enforced, and the
pipeline runs it on the logits bank like any built-in section.
"""

import sys
import textwrap

import numpy as np
import pytest

from duojax import errors
from duojax.eval import pipeline, render, schema
from duojax.eval import sections as eval_sections

AGREEMENT = '''
"""How often the large model and the sidekick agree on test, beside the duo's accuracy."""

import numpy as np

from duojax.errors import ConfigError
from duojax.eval.inputs import TEST

READS = ("methods",)


def defaults():
  return {"agreement_digits": 3}  # decimals of the agreement rate in the report


def validate(config):
  if config.agreement_digits < 0:
    raise ConfigError(f"config.agreement_digits must be >= 0, got {config.agreement_digits}")


def enabled(config):
  return bool(config.sidekick)


def build(inputs, results):
  large = inputs.bank.member(TEST, inputs.large).argmax(-1)
  sidekick = inputs.bank.member(TEST, inputs.sidekick).argmax(-1)
  return {"agreement": {"rate": float(np.mean(large == sidekick)),
                        "duo_acc": results["methods"]["duo (weighted)"]["test"]["acc"],
                        "digits": inputs.config.agreement_digits}}


def markdown(results):
  if "agreement" not in results:
    return []
  a = results["agreement"]
  return [f"Agreement of large and sidekick: {a['rate']:.{a['digits']}f}"]
'''


@pytest.fixture
def agreement_section(tmp_path, monkeypatch):
  folder = tmp_path / "more_sections"
  folder.mkdir()
  (folder / "agreement.py").write_text(textwrap.dedent(AGREEMENT))
  monkeypatch.setattr(eval_sections, "__path__", [*eval_sections.__path__, str(folder)])
  yield
  sys.modules.pop(f"{eval_sections.__name__}.agreement", None)


def _logits_file(path, labels, strength, seed):
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, y in labels.items():
    arrays[f"{split}_labels"] = y
    arrays[f"{split}_logits"] = (strength * np.eye(5)[y] + rng.normal(size=(len(y), 5))).astype(
      np.float32
    )
  np.savez(path, **arrays)
  return f"logits:{path}"


def _config(tmp_path, **overrides):
  rng = np.random.default_rng(0)
  labels = {"val": rng.integers(0, 5, 300), "test": rng.integers(0, 5, 400)}
  config = schema.base_eval_config()
  config.update(
    {
      "large": _logits_file(tmp_path / "large.npz", labels, 3.0, 1),
      "sidekick": _logits_file(tmp_path / "sidekick.npz", labels, 1.5, 2),
      "sections": "methods,agreement",
      "mahalanobis_train_rows": 0,
      "output_dir": str(tmp_path / "out"),
      **overrides,
    }
  )
  return config


def test_a_new_sections_key_check_and_order_come_from_its_module(tmp_path, agreement_section):
  assert "agreement" in eval_sections.available()
  assert schema.base_eval_config().agreement_digits == 3
  schema.validate_eval(_config(tmp_path))
  with pytest.raises(errors.ConfigError, match="agreement_digits must be >= 0"):
    schema.validate_eval(_config(tmp_path, agreement_digits=-1))
  with pytest.raises(errors.ConfigError, match="'agreement' reads the scores of 'methods'"):
    schema.validate_eval(_config(tmp_path, sections="agreement,methods"))


def test_the_pipeline_runs_a_new_section_on_the_logits_bank(tmp_path, agreement_section):
  config = _config(tmp_path, agreement_digits=2)
  results = pipeline.run(config)
  large = np.load(tmp_path / "large.npz")["test_logits"].argmax(-1)
  sidekick = np.load(tmp_path / "sidekick.npz")["test_logits"].argmax(-1)
  assert results["agreement"]["rate"] == pytest.approx(np.mean(large == sidekick))
  assert results["agreement"]["duo_acc"] == results["methods"]["duo (weighted)"]["test"]["acc"]
  report = render.markdown(results, pipeline.active_sections(schema.complete_eval_config(config)))
  assert f"Agreement of large and sidekick: {results['agreement']['rate']:.2f}" in report
