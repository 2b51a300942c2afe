"""`python -m duojax.data [DATA_DIR]`: fetches and prepares the embedded Fashion-MNIST."""

import sys
import time

from duojax.data import embedded
from duojax.errors import DataError


def main(argv: list[str]) -> None:
  data_dir = argv[1] if len(argv) > 1 else "data"
  start = time.perf_counter()
  try:
    embedded.prepare_fashion_mnist(data_dir)
  except DataError as e:
    sys.exit(f"error: {e}")
  print(f"fashion_mnist is prepared in {data_dir} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  main(sys.argv)
