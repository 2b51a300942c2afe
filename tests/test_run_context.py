"""The run context: a run's checkpoint manager, batches and progress bar are
closed exactly once, whether training returns, raises midway or is pre-empted."""

import os
import signal
import time

import pytest
from helpers import tiny_train_config

from duojax.train import loop, preemption
from duojax.train.run_context import RunContext


class _Closable:
  """Records its closes in `closed` (a list shared by several, so it shows the order)."""

  def __init__(self, name, closed, fails=False):
    self.name, self.closed, self.fails = name, closed, fails

  def close(self):
    self.closed.append(self.name)
    if self.fails:
      raise OSError(f"{self.name} failed to close")


def test_everything_closes_once_in_reverse_order_on_an_exception():
  closed = []
  with pytest.raises(RuntimeError, match="midway"):
    with RunContext(_Closable("manager", closed)) as run:
      run.batches = _Closable("batches", closed)
      run.bar = _Closable("bar", closed)
      raise RuntimeError("midway")
  assert closed == ["bar", "batches", "manager"]


def test_ending_training_early_leaves_only_the_manager_to_the_exit():
  closed = []
  with RunContext(_Closable("manager", closed)) as run:
    run.batches = _Closable("batches", closed)
    run.bar = _Closable("bar", closed)
    run.end_training()
    run.end_training()
    assert closed == ["bar", "batches"]
  assert closed == ["bar", "batches", "manager"]

  closed.clear()
  with pytest.raises(RuntimeError):
    with RunContext(_Closable("manager", closed)) as run:
      run.close()
      raise RuntimeError("after closing")
  assert closed == ["manager"]


def test_a_failing_close_still_closes_the_others():
  closed = []
  with pytest.raises(OSError, match="bar failed"):
    with RunContext(_Closable("manager", closed)) as run:
      run.batches = _Closable("batches", closed)
      run.bar = _Closable("bar", closed, fails=True)
  assert closed == ["bar", "batches", "manager"]


class _Counted:
  """A manager, batch iterator or progress bar that counts its closes in `closes[name]`."""

  def __init__(self, inner, name, closes):
    self.inner, self.name, self.closes = inner, name, closes
    closes.setdefault(name, []).append(0)  # one count per object opened
    self.index = len(closes[name]) - 1

  def close(self):
    self.closes[self.name][self.index] += 1
    self.inner.close()

  def __next__(self):
    return next(self.inner)

  def __getattr__(self, attr):
    return getattr(self.inner, attr)


class _Patched:
  """`module` as the loop sees it, with some of its functions replaced."""

  def __init__(self, module, **replaced):
    self.module, self.replaced = module, replaced

  def __getattr__(self, attr):
    return self.replaced.get(attr) or getattr(self.module, attr)


def _patch(monkeypatch, closes, fail_at, action):
  """Makes the loop's manager, batches and bar count their closes, and its
  train step run `action()` before its `fail_at`-th call."""
  for name, factory, counted in (
    ("checkpoint", "make_manager", "manager"),
    ("data", "train_batches", "batches"),
    ("tqdm", "tqdm", "bar"),
  ):
    make = getattr(getattr(loop, name), factory)
    wrapped = lambda *a, _make=make, _counted=counted, **k: _Counted(
      _make(*a, **k), _counted, closes
    )
    monkeypatch.setattr(loop, name, _Patched(getattr(loop, name), **{factory: wrapped}))

  make_train_step = loop.steps.make_train_step

  def make(*args, **kwargs):
    train_step, calls = make_train_step(*args, **kwargs), []

    def counted(state, batch):
      calls.append(None)
      if len(calls) == fail_at:
        action()
      return train_step(state, batch)

    return counted

  monkeypatch.setattr(loop, "steps", _Patched(loop.steps, make_train_step=make))


def _raise():
  raise RuntimeError("step failed midway")


def _send_sigusr1():
  os.kill(os.getpid(), signal.SIGUSR1)
  handler = signal.getsignal(signal.SIGUSR1)  # the active StopSignals' bound method
  deadline = time.monotonic() + 10
  while handler.__self__.signum is None and time.monotonic() < deadline:
    time.sleep(0.01)  # Python runs the handler in the main thread, soon


@pytest.mark.slow
@pytest.mark.parametrize(
  "action, error, last_checkpoint",
  [
    (_raise, RuntimeError, 2),  # raised before step 3: the periodic checkpoint of step 2
    (_send_sigusr1, preemption.Preempted, 3),  # step 3 finishes and is checkpointed
  ],
)
def test_a_training_that_stops_midway_closes_each_once(
  monkeypatch, tmp_path, learnable_data_dir, action, error, last_checkpoint
):
  steps = loop.steps
  closes = {}
  _patch(monkeypatch, closes, 3, action)
  config = tiny_train_config(learnable_data_dir, total_steps=6, log_every=1, checkpoint_every=2)
  with pytest.raises(error):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert closes == {"manager": [1], "batches": [1], "bar": [1]}

  # Resumed and trained to the end: the bar and batches close before the
  # final evaluation, the manager after it; each once.
  closes.clear()
  monkeypatch.setattr(loop, "steps", steps)
  summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["resumed_from"] == last_checkpoint
  assert closes == {"manager": [1], "batches": [1], "bar": [1]}
