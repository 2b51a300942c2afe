"""Writes a duojax logits file from a PyTorch classifier (run it where PyTorch is).

  python examples/write_logits.py   # then: evaluate.py --config configs/eval_logits.py ...
"""
import numpy as np
import torch


def logits_of(model, loader):
  model.eval()
  with torch.no_grad():
    out = [(model(x).float().numpy(), y.numpy()) for x, y in loader]
  return np.concatenate([z for z, _ in out]), np.concatenate([y for _, y in out])


def write(path, model, val_loader, test_loader, ood_loader=None, flops_per_image=None):
  val_logits, val_labels = logits_of(model, val_loader)     # loaders in a fixed order
  test_logits, test_labels = logits_of(model, test_loader)
  extra = {} if ood_loader is None else {"ood_logits": logits_of(model, ood_loader)[0]}
  if flops_per_image is not None:
    extra["flops_per_image"] = np.float64(flops_per_image)
  np.savez(path, val_logits=val_logits, val_labels=val_labels.astype(np.int64),
           test_logits=test_logits, test_labels=test_labels.astype(np.int64), **extra)


if __name__ == "__main__":  # a toy model on random data, to show the format
  data = torch.utils.data.TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 5, (64,)))
  loader = torch.utils.data.DataLoader(data, batch_size=16)
  model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
  write("toy_logits.npz", model, loader, loader, flops_per_image=2 * 3 * 8 * 8 * 5)
  print("wrote toy_logits.npz")
