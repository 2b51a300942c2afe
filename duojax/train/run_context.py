"""`RunContext`: what a training run holds open, closed exactly once however it ends."""

from __future__ import annotations


class RunContext:
  """The checkpoint manager, the training batches and the progress bar of a run.

  Used as `with RunContext(manager) as run:` around everything that follows
  the manager's creation. `run.batches` and `run.bar` are set as each opens,
  when training starts, and closed by `end_training` (before the final
  evaluation, so the batches' prefetching stops first) or on leaving the
  `with`; the manager is closed on leaving it, after the other two. Each is
  closed exactly once, whether the run returns or raises (an unclosed
  manager's threads would print tracebacks at exit); closing early with
  `close` (as a pre-empted run does while its stop-signal handlers still
  hold) leaves nothing for the exit to close. A close that raises still
  lets the others close.
  """

  def __init__(self, manager):
    self.manager, self.batches, self.bar = manager, None, None

  def __enter__(self) -> RunContext:
    return self

  def __exit__(self, *exc_info) -> bool:
    self.close()
    return False

  def close(self) -> None:
    """Closes what is still open: the bar, the batches, then the manager."""
    try:
      self.end_training()
    finally:
      manager, self.manager = self.manager, None
      if manager is not None:
        manager.close()

  def end_training(self) -> None:
    """Closes the progress bar, then the batches (their prefetch thread); once."""
    bar, self.bar = self.bar, None
    batches, self.batches = self.batches, None
    try:
      if bar is not None:
        bar.close()
    finally:
      if batches is not None:
        batches.close()
