"""lit-align: aligning language models from pairwise preferences, on Lightning."""

from lit_align.policy import LoraOptions, PolicyWithReference

__version__ = "0.1.0"
__all__ = ["LoraOptions", "PolicyWithReference", "__version__"]
