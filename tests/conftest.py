import pytest

import helpers


@pytest.fixture(scope="session")
def learnable_data_dir(tmp_path_factory):
  """A prepared 'fashion_mnist' (600 train / 200 test) that a tiny model can learn."""
  return helpers.prepare_learnable_fashion_mnist(tmp_path_factory.mktemp("idx"),
                                               tmp_path_factory.mktemp("tfds"))
