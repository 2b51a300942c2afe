"""The conformal section of the report: sets calibrated on half of val, scored on test."""

from helpers import synthetic_eval_inputs

from duojax.eval.sections import conformal as section


def _inputs(n=2000, seed=0):
  return synthetic_eval_inputs(
    n, seed, conformal_alphas="0.1,0.05", conformal_methods="lac,aps,raps"
  )


def test_every_model_covers_its_target_and_the_section_renders(tmp_path):
  results = section.build(_inputs(), {})
  models = results["conformal"]["models"]
  assert list(models) == ["large+TS", "duo (weighted)", "ensemble m=2+TS"]
  for entry in models.values():
    for kind in ("lac", "aps", "raps"):
      for level in (0.9, 0.95):
        cell = entry[f"{kind}@{level:g}"]
        # 1000 calibration rows: coverage is level ± about 0.02 on 2000 test rows.
        assert cell["coverage"] > level - 0.025, (kind, level, cell)
        assert sum(cell["size_counts"]) == 2000 and cell["mean_size"] >= 0.5
      assert entry[f"{kind}@0.95"]["mean_size"] >= entry[f"{kind}@0.9"]["mean_size"] - 0.05
  # The duo (two informative members) needs smaller LAC sets than the large model alone.
  assert (
    models["duo (weighted)"]["lac@0.9"]["mean_size"] < models["large+TS"]["lac@0.9"]["mean_size"]
  )
  lines = section.markdown(results)
  assert lines[0] == "### Conformal prediction sets (test split)"
  assert any(line.startswith("| duo (weighted) | RAPS |") for line in lines)
  paths = section.write_plots(results, str(tmp_path))
  assert (tmp_path / "conformal_set_sizes.png").exists() and len(paths) == 1


def test_the_calibration_half_is_seeded_and_disjoint_from_the_fit_half():
  inputs = _inputs(n=400)
  a = section.build(inputs, {})["conformal"]
  b = section.build(inputs, {})["conformal"]
  assert a == b and a["fit_rows"] + a["calibration_rows"] == 400
