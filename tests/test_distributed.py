"""Scale-out: two processes on 127.0.0.1, fake CPU devices, FSDP, multi-process settings."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from duojax.parallel import distributed, sharding
from duojax.train import checkpoint

# Slow as a whole (several processes and fake devices):
# `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


# ----------------------------------------------------------------------------
# Settings.


def test_settings_come_from_flags_then_environment():
  env = {
    "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
    "JAX_NUM_PROCESSES": "4",
    "JAX_PROCESS_ID": "3",
  }
  settings = distributed.settings_from(env=env)
  assert (settings.coordinator_address, settings.num_processes, settings.process_id) == (
    "10.0.0.1:1234",
    4,
    3,
  )
  assert distributed.should_initialize(settings, env={})
  flagged = distributed.settings_from("auto", "h:1", 2, 0, ["1"], env=env)
  assert (
    flagged.coordinator_address,
    flagged.num_processes,
    flagged.process_id,
    flagged.local_device_ids,
  ) == ("h:1", 2, 0, (1,))
  assert not distributed.should_initialize(distributed.settings_from(env={}), env={})
  off = distributed.settings_from("off", env=env)
  assert not distributed.should_initialize(off, env=env)


@pytest.mark.parametrize(
  "env, cluster",
  [
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, "slurm"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # one task: single process
    ({"SLURM_JOB_ID": "7"}, None),  # an allocation, not a step
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, "openmpi"),
    ({}, None),
  ],
)
def test_clusters_are_detected_from_their_environment(env, cluster):
  assert distributed.detected_cluster(env) == cluster
  assert distributed.should_initialize(distributed.settings_from(env={}), env=env) == (
    cluster is not None
  )


@pytest.mark.parametrize(
  "kwargs, pattern",
  [
    (dict(mode="sometimes"), "--distributed='sometimes'"),
    (dict(coordinator_address="nohost"), "host:port"),
    (dict(coordinator_address="h:1"), "needs num_processes and process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "not in [0, 2)"),
    (dict(num_processes=0, process_id=0), "num_processes must be >= 1"),
    (dict(local_device_ids=["gpu0"]), "must be integers"),
  ],
)
def test_bad_settings_are_refused(kwargs, pattern):
  with pytest.raises(distributed.DistributedError) as error:
    distributed.settings_from(env={}, **kwargs)
  assert pattern in str(error.value)


def test_bad_env_setting_is_refused():
  with pytest.raises(distributed.DistributedError, match="JAX_NUM_PROCESSES='two'"):
    distributed.settings_from(env={"JAX_NUM_PROCESSES": "two"})


def test_cli_bad_multi_process_flags_are_one_line_errors(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "train.py"),
      "--config",
      os.path.join(ROOT, "configs/fashion_mnist.py"),
      f"--workdir={tmp_path / 'w'}",
      "--coordinator_address=127.0.0.1:1",
      "--num_processes=2",
      "--process_id=5",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
    env=ENV,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == "error: process_id=5 is not in [0, 2)"
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "shape, fsdp, min_elements, spec",
  [
    ((768, 3072), 8, 0, (None, "fsdp")),  # the larger dimension
    ((3072, 768), 8, 0, ("fsdp",)),
    ((512, 512), 4, 0, (None, "fsdp")),  # a tie goes to the output features
    ((3, 3, 64, 130), 4, 0, (None, None, "fsdp")),  # 130 % 4 != 0: the next largest
    ((7, 9), 2, 0, ()),  # nothing divisible: replicated
    ((768,), 8, 1 << 14, ()),  # small: replicated
    ((768, 3072), 1, 0, ()),  # no fsdp axis
    ((), 8, 0, ()),  # scalars (step counters)
  ],
)
def test_fsdp_spec_splits_the_largest_divisible_dimension(shape, fsdp, min_elements, spec):
  assert tuple(sharding.fsdp_spec(shape, fsdp, min_elements)) == spec


# ----------------------------------------------------------------------------
# Two processes (gloo collectives on 127.0.0.1) against one.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(script: str, args: list[str], num_processes: int) -> list[str]:
  """Runs `script` as a job of `num_processes` processes; returns process 0's stdout."""
  base = [sys.executable, os.path.join(ROOT, script), *args]
  if num_processes == 1:
    commands = [base]
  else:
    address = f"127.0.0.1:{_free_port()}"
    commands = [
      [
        *base,
        f"--coordinator_address={address}",
        f"--num_processes={num_processes}",
        f"--process_id={i}",
      ]
      for i in range(num_processes)
    ]
  procs = [
    subprocess.Popen(
      c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV
    )
    for c in commands
  ]
  outputs = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=420)
      assert proc.returncode == 0, err[-3000:]
      outputs.append(out)
  finally:
    for proc in procs:
      proc.kill()
  return outputs


def _train_args(data_dir, workdir, model="resnet8", steps=8):
  overrides = ["--config.model.width=4", "--config.model.dropout=0.1"] if model == "resnet8" else []
  return [
    "--config",
    os.path.join(ROOT, f"configs/fashion_mnist.py:model={model}"),
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    "--config.val_size=100",
    "--config.batch_size=32",
    f"--config.total_steps={steps}",
    "--config.log_every=2",
    "--config.eval_batch_size=50",
    "--config.checkpoint_every=4",
    "--config.warmup_steps=2",
    "--config.lr=3e-3",
    *overrides,
  ]


def _params(workdir):
  from duojax.models import functional

  model, meta = checkpoint.load_model(str(workdir))
  return functional.split_model(model)[1], meta


def _max_difference(a, b) -> float:
  import jax

  return max(
    jax.tree.leaves(
      jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
        a,
        b,
      )
    )
  )


def _assert_results_close(one, two, path=""):
  """Every number in two results.json files agrees (timings and device lists aside)."""
  if isinstance(one, dict):
    assert set(one) == set(two), path
    for key in one:
      if key not in ("seconds", "devices"):
        _assert_results_close(one[key], two[key], f"{path}/{key}")
  elif isinstance(one, list):
    assert len(one) == len(two), path
    for i, (a, b) in enumerate(zip(one, two)):
      _assert_results_close(a, b, f"{path}[{i}]")
  elif isinstance(one, float) and isinstance(two, float):
    # Logits agree to float32 rounding; threshold metrics (FPR95, SAC) may
    # still move by one example of the 10,000 OOD ones. One test example of
    # the 200 would move a metric by 5e-3.
    assert np.isclose(one, two, rtol=1e-4, atol=1e-3, equal_nan=True), (path, one, two)
  else:
    assert one == two, (path, one, two)


def test_two_processes_train_and_evaluate_the_duo_as_one_process(tmp_path, learnable_data_dir):
  runs = {n: tmp_path / f"{n}proc" for n in (1, 2)}
  for n, root in runs.items():
    out = _run_processes("train.py", _train_args(learnable_data_dir, root / "large"), n)
    assert "test accuracy" in out[0]
    assert all("test accuracy" not in o for o in out[1:])  # only process 0 reports
  sidekick = tmp_path / "sidekick"
  _run_processes("train.py", _train_args(learnable_data_dir, sidekick, model="cnn_xs", steps=6), 1)

  # Same global batches, same math: float32 reduction order is the only difference.
  (one, meta_one), (two, meta_two) = (_params(runs[n] / "large") for n in (1, 2))
  assert meta_one["step"] == meta_two["step"] == 8
  assert _max_difference(one, two) < 1e-5
  logs = [[json.loads(line) for line in open(runs[n] / "large" / "metrics.jsonl")] for n in (1, 2)]
  assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]  # written once
  for a, b in zip(*logs):
    for key in ("train_loss", "val_nll"):
      if key in a:
        assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
  assert sorted(os.listdir(runs[2] / "large" / "checkpoints")) == ["4", "8"]

  results = {}
  for n in (1, 2):
    out_dir = tmp_path / f"eval{n}"
    _run_processes(
      "evaluate.py",
      [
        "--config",
        os.path.join(ROOT, "configs/demo_eval.py:hydra=0"),
        f"--config.large={runs[1] / 'large'}",
        f"--config.sidekick={sidekick}",
        "--config.ensemble=",
        "--config.soup_ingredients=",
        "--config.gatekeeper=",
        "--config.shifts=blur",
        "--config.shift_max_images=50",
        "--config.mc_dropout_samples=3",
        "--config.bootstrap=5",
        "--config.batch_size=50",
        f"--config.output_dir={out_dir}",
      ],
      n,
    )
    results[n] = json.load(open(out_dir / "results.json"))
  assert results[2]["devices"].startswith("2 ")
  assert "duo (weighted)" in results[1]["methods"]
  _assert_results_close(results[1], results[2])


# ----------------------------------------------------------------------------
# Fake devices in one process: data parallel, FSDP, sharded evaluation.

_FAKE_DEVICES_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from duojax import config_lib, data
    from duojax.core import duo, temperature
    from duojax.models import functional, spec
    from duojax.parallel import sharding
    from duojax.train import optim, steps

    def max_diff(a, b):
      return max(jax.tree.leaves(jax.tree.map(
          lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
          a, b)))

    config = config_lib.base_config()
    config.warmup_steps = 1
    # SGD + momentum: updates linear in the gradients, so float32 reduction
    # order shows as rounding (Adam's m / sqrt(v) would amplify it on
    # near-zero gradients); the momentum buffers are split like the params.
    config.optimizer, config.lr = "sgd", 0.05
    model = spec.build_model("vit_mu4", {}, 10, (16, 16, 1), seed=0)
    graphdef, params, batch_stats = functional.split_model(model)
    optimizer = optim.make_optimizer(config, 3)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(8, 16, 16, 1)).astype(np.float32),
                "label": rng.integers(0, 10, size=8).astype(np.int32)} for _ in range(3)]
    initial = jax.tree.map(np.array, steps.init_state(params, batch_stats, optimizer))
    total_bytes = sum(x.nbytes for x in jax.tree.leaves(initial))

    finals = {}
    for devices, fsdp in ((1, 1), (2, 1), (4, 2), (4, 4)):
      mesh = sharding.make_mesh(devices, fsdp)
      # Every parameter split, however small, so the tiny model shows the split.
      shardings = sharding.state_shardings(initial, mesh, min_elements=0)
      state = jax.device_put(initial, shardings)
      step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0,
                                       state_sharding=shardings)
      for batch in batches:
        state, _ = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
        jax.block_until_ready(state)  # un-synced all-reduces on fake CPU devices deadlock
      print("CONFIG", devices, fsdp, "BYTES", sharding.bytes_per_device(state) / total_bytes)
      finals[(devices, fsdp)] = jax.device_get(state)
    for key, final in finals.items():
      print("DIFF", *key, max_diff(finals[(1, 1)], final))

    # A global batch that the 4 devices cannot split evenly is refused.
    try:
      data.eval_batches(data.Split(data.ArraySource(np.zeros((4, 16, 16, 1), np.uint8),
                                                    np.zeros(4, np.int32)), np.arange(4)),
                        global_batch_size=6, mean=[0.0], std=[1.0],
                        sharding=sharding.batch_sharding(sharding.make_mesh(4, 2)))
    except data.DataError as e:
      print("INDIVISIBLE", e)

    # The fused duo forward on a 4-device mesh equals one device.
    sidekick = spec.build_model("cnn_xs", {}, 10, (16, 16, 1), seed=1)
    graphdefs, states = duo.split_members([model, sidekick])
    images = rng.normal(size=(12, 16, 16, 1)).astype(np.float32)
    mesh = sharding.make_mesh(4, 2)
    sharded = duo.make_fused_forward(graphdefs, mesh=mesh)(
        jax.device_put(states, sharding.replicated(mesh)),
        jax.device_put(images, sharding.batch_sharding(mesh)))
    jax.block_until_ready(sharded)
    plain = duo.make_fused_forward(graphdefs)(states, images)
    print("FORWARD", float(np.max(np.abs(np.asarray(sharded) - np.asarray(plain)))),
          len(sharded.sharding.device_set))

    # The temperature fit on logits split by rows (N padded to the mesh) is
    # the fit on the whole array: its NLL is a mean over every device's rows.
    logits = rng.normal(size=(2, 203, 10)).astype(np.float32) * [[[2.0]], [[0.5]]]
    labels = rng.integers(0, 10, size=203).astype(np.int32)
    members = [sharding.shard_rows(z, mesh)[0] for z in logits]
    sharded_labels, mask = sharding.shard_rows(labels, mesh)
    w_sharded = temperature.fit_temperatures(members, sharded_labels, mask=mask)
    w_plain = temperature.fit_temperatures(list(logits), labels)
    print("FIT", float(np.max(np.abs(np.asarray(w_sharded) - np.asarray(w_plain)))),
          members[0].shape[0], len(members[0].sharding.device_set))
""")


def test_fake_devices_data_parallel_and_fsdp_equal_one_device():
  result = subprocess.run(
    [sys.executable, "-c", _FAKE_DEVICES_SCRIPT],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env=ENV,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  diffs = {
    tuple(map(int, l.split()[1:3])): float(l.split()[3]) for l in lines if l.startswith("DIFF")
  }
  assert set(diffs) == {(1, 1), (2, 1), (4, 2), (4, 4)}
  assert max(diffs.values()) < 1e-5, diffs
  fractions = {
    tuple(map(int, l.split()[1:3])): float(l.split()[4]) for l in lines if l.startswith("CONFIG")
  }
  # Replicated: every device holds the whole state; FSDP over k devices: about 1/k of it.
  assert fractions[(2, 1)] == pytest.approx(1.0)
  assert fractions[(4, 2)] < 0.6 and fractions[(4, 4)] < 0.35, fractions
  forward = next(l for l in lines if l.startswith("FORWARD")).split()
  assert float(forward[1]) < 1e-5 and forward[2] == "4"
  assert "INDIVISIBLE global_batch_size=6 is not divisible by the 4 devices" in result.stdout
  fit = next(l for l in lines if l.startswith("FIT")).split()
  assert float(fit[1]) < 1e-5 and fit[2:] == ["204", "4"]


def test_train_cli_with_fsdp_on_two_devices_equals_one_device(tmp_path, learnable_data_dir):
  outputs = {}
  for devices, extra in ((1, []), (2, ["--config.fsdp=2"])):
    env = {**ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    workdir = tmp_path / f"fsdp{devices}"
    result = subprocess.run(
      [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *_train_args(learnable_data_dir, workdir, model="cnn_xs", steps=4),
        *extra,
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=ROOT,
      env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(workdir / "summary.json"))
    outputs[devices] = _params(workdir)[0], summary["state_bytes_per_device"]
  # An FSDP checkpoint loads on one device, with the same weights.
  assert _max_difference(outputs[1][0], outputs[2][0]) < 1e-5
  # cnn_xs's dense kernel (25,088 weights and its Adam moments) is split in two.
  assert outputs[2][1] < 0.7 * outputs[1][1], (outputs[1][1], outputs[2][1])

  # A run pre-empted on 2 devices with FSDP resumes on 1 device without it.
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "train.py"),
      *_train_args(learnable_data_dir, tmp_path / "fsdp2", model="cnn_xs", steps=6),
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env={**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(tmp_path / "fsdp2" / "summary.json"))
  assert (summary["resumed_from"], summary["steps"]) == (4, 6)
