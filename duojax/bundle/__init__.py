"""A fitted duo as a folder that runs on new images: `write_bundle`, `load_bundle`.

`format` writes and checks the folder (manifest, member safetensors, duo
weights, validation confidences), `exported` lowers the fused duo with
`jax.export` for every platform, `loaded` runs a bundle through duojax, and
`serve` runs its exported program with jax and numpy alone.
"""

from duojax.bundle.format import BundleMember, write_bundle
from duojax.bundle.loaded import Bundle, load_bundle

__all__ = ["Bundle", "BundleMember", "load_bundle", "write_bundle"]
