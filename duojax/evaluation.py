"""Logits of trained members on every evaluation split, computed once.

All members (large model, sidekicks, ensemble members, soups) go through one
fused jitted forward per batch (`duo.make_fused_forward`), so each split is
read once and every member's logits come out of the same XLA program. The
result is a `LogitsBank`: split name -> labels and [m, N, C] logits, the only
input the post-hoc methods (temperatures, duos, ensembles) need.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from duojax import checkpoint, data, duo, sharding, shifts, train_lib


@dataclasses.dataclass
class Member:
  """A trained model to evaluate, with its cost."""
  name: str
  model: nnx.Module
  meta: dict
  flops: float = float("nan")  # forward FLOPs per image (XLA cost analysis)


@dataclasses.dataclass
class LogitsBank:
  """Per split: labels [N] and logits [m, N, C] in `member_names` order."""
  member_names: tuple[str, ...]
  labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  logits: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # Member 0's pre-logit features [N, D] per split, when collected with them.
  features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def member(self, split: str, name: str) -> np.ndarray:
    return self.logits[split][self.member_names.index(name)]

  def stack(self, split: str, names: Sequence[str]) -> np.ndarray:
    return self.logits[split][[self.member_names.index(n) for n in names]]

  def add_member(self, name: str, logits_by_split: dict[str, np.ndarray]) -> None:
    """Appends a derived member (e.g. MC-dropout averages) to every split."""
    if set(logits_by_split) != set(self.logits):
      raise ValueError(f"member {name!r} needs logits for splits {sorted(self.logits)}")
    self.member_names = (*self.member_names, name)
    for split, logits in logits_by_split.items():
      self.logits[split] = np.concatenate([self.logits[split], logits[None]], axis=0)


def load_member(name: str, workdir: str, *, mesh=None) -> Member:
  """A trained model, replicated over `mesh` when given (needed across hosts)."""
  model, meta = checkpoint.load_model(
      workdir, sharding=None if mesh is None else sharding.replicated(mesh))
  graphdef, params, batch_stats = train_lib.split_model(model)
  flops = train_lib.flops_per_image(graphdef, params, batch_stats, tuple(meta["image_shape"]))
  return Member(name, model, meta, flops)


def check_members_agree(members: Sequence[Member]) -> None:
  """All members must see the same images and predict the same label set."""
  first = members[0]
  for member in members[1:]:
    for key in ("num_classes", "image_shape", "dataset"):
      if member.meta.get(key) != first.meta.get(key):
        raise ValueError(
            f"members disagree on {key}: {first.name!r} has {first.meta.get(key)!r}, "
            f"{member.name!r} has {member.meta.get(key)!r}")


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:  # global arrays span hosts: gather the rows
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def split_logits(forward: Callable, states, batches: Iterable[dict], *, desc: str = "",
                 total: int | None = None, with_features: bool = False):
  """Runs the fused forward over masked batches.

  Returns (logits [m, N, C], labels [N]), plus member 0's features [N, D]
  when `with_features` (the forward must have been built with them).
  """
  logits, labels, features = [], [], []
  for batch in tqdm.tqdm(batches, desc=desc, total=total, leave=False, mininterval=2.0,
                         disable=jax.process_index() != 0):
    out = forward(states, batch["image"])
    mask = _to_host(batch["mask"])
    if with_features:
      out, feats = out
      features.append(_to_host(feats)[mask])
    logits.append(_to_host(out)[:, mask])
    labels.append(_to_host(batch["label"])[mask])
  if not logits:
    raise ValueError(f"split {desc!r} is empty")
  result = (np.concatenate(logits, axis=1), np.concatenate(labels))
  return (*result, np.concatenate(features)) if with_features else result


def array_split(images: np.ndarray, labels: np.ndarray) -> data.Split:
  """A `data.Split` over in-memory uint8 images (OOD sets, shifted test sets)."""
  return data.Split(data.ArraySource(images, labels.astype(np.int32)),
                    np.arange(len(labels), dtype=np.int64))


def collect(members: Sequence[Member], dataset: data.Dataset, splits: dict[str, data.Split], *,
            mesh, batch_size: int, with_features: bool = False) -> LogitsBank:
  """Logits of every member on every split (one fused forward per batch).

  `with_features` also keeps member 0's pre-logit features in `bank.features`.
  """
  check_members_agree(members)
  graphdefs, states = duo.split_members([m.model for m in members])
  forward = duo.make_fused_forward(graphdefs, mesh=mesh, with_features=with_features)
  states = jax.device_put(states, sharding.replicated(mesh))
  bank = LogitsBank(tuple(m.name for m in members))
  for name, split in splits.items():
    batches = data.eval_batches(split, global_batch_size=batch_size, mean=dataset.mean,
                                std=dataset.std, sharding=sharding.batch_sharding(mesh))
    out = split_logits(forward, states, batches, desc=name,
                       total=-(-len(split) // batch_size), with_features=with_features)
    bank.logits[name], bank.labels[name] = out[0], out[1]
    if with_features:
      bank.features[name] = out[2]
  return bank


def shifted_splits(test: data.Split, *, kinds=shifts.SHIFTS, severities=shifts.SEVERITIES,
                   max_images: int | None = None, seed: int = 0) -> dict[str, data.Split]:
  """Corrupted copies of (a seeded subset of) the test split, named 'kind/severity'."""
  positions = np.arange(len(test))
  if max_images is not None and max_images < len(test):
    positions = np.sort(np.random.default_rng(seed).permutation(len(test))[:max_images])
  images, labels = data.read_examples(test, positions)
  return {f"{kind}/{severity}": array_split(shifts.corrupt(images, kind, severity, seed=seed),
                                            labels)
          for kind in kinds for severity in severities}


def mc_dropout_logits(head: nnx.Module, features: dict[str, np.ndarray], *, rate: float,
                      num_samples: int, seed: int = 0,
                      chunk: int = 4096) -> dict[str, np.ndarray]:
  """log of the mean softmax over `num_samples` dropout masks on the pre-logits.

  Dropout is applied to the features the head sees (last-layer MC dropout):
  exact for models whose only dropout sits before the head (the ResNets and
  CNNs here), cheap (the backbone's features come from the one fused pass,
  only the head runs K times), and an approximation for ViTs trained with
  dropout inside their blocks.
  """
  if not 0.0 < rate < 1.0:
    raise ValueError(f"MC dropout rate must be in (0, 1), got {rate}")
  if num_samples < 1:
    raise ValueError(f"MC dropout needs num_samples >= 1, got {num_samples}")
  head_graphdef, head_state = nnx.split(head)

  @jax.jit
  def mc_head(head_state, rows, key):
    head = nnx.merge(head_graphdef, head_state)

    def one_sample(k):
      keep = jax.random.bernoulli(k, 1.0 - rate, rows.shape)
      dropped = jnp.where(keep, rows / (1.0 - rate), 0.0)
      return jax.nn.log_softmax(head(dropped).astype(jnp.float32))

    log_probs = jax.vmap(one_sample)(jax.random.split(key, num_samples))
    return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(num_samples)

  out = {}
  key = jax.random.key(seed)
  for name, rows in features.items():
    # Keys from (seed, split name, chunk): reproducible across processes
    # (str hash() is salted per process, crc32 is not).
    split_key = jax.random.fold_in(key, zlib.crc32(name.encode()))
    parts = []
    for i, start in enumerate(range(0, len(rows), chunk)):
      block = rows[start:start + chunk]
      padded = np.zeros((chunk, rows.shape[1]), np.float32)  # one shape: one compile
      padded[:len(block)] = block
      parts.append(np.asarray(mc_head(head_state, padded,
                                      jax.random.fold_in(split_key, i)))[:len(block)])
    out[name] = np.concatenate(parts)
  return out
