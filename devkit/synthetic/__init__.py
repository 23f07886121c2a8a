"""Random-weight checkpoints with the real Phi-3-vision and Whisper architectures, for tests and benchmarks.

Real weights cannot be downloaded everywhere this project is developed; these checkpoints let the real
download-free parts (conversion, loading, generation, the bot) run on the real architecture and file layout.
Needs the conversion dependencies (torch, transformers, tokenizers).
"""

from devkit.synthetic.builder import SIZES, SyntheticSpec, build_synthetic_checkpoint
from devkit.synthetic.whisper import build_synthetic_whisper

__all__ = ["SIZES", "SyntheticSpec", "build_synthetic_checkpoint", "build_synthetic_whisper"]
