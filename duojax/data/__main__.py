"""`python -m duojax.data [DATA_DIR]`: fetches and prepares the embedded Fashion-MNIST."""

import sys
import time

from duojax import cli
from duojax.data import embedded


def main(argv: list[str]) -> None:
  data_dir = argv[1] if len(argv) > 1 else "data"
  start = time.perf_counter()
  embedded.prepare_fashion_mnist(data_dir)
  print(f"fashion_mnist is prepared in {data_dir} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  cli.report_errors(main, sys.argv)
