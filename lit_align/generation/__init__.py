"""Generation backends of ``PolicyWithReference.generate`` besides Hugging Face ``generate`` (``lit_align.generation.rollout``).

Importing this package never imports an inference engine: ``vllm`` is imported when its engine is first built.
"""

from lit_align.generation.vllm_engine import VLLMBackend

__all__ = ["VLLMBackend"]
