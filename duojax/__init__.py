"""duojax: cheap, strong uncertainty for large image classifiers in JAX/Flax."""

__version__ = "0.1.0"
