"""Turning a Hugging Face checkpoint (or a ready OpenVINO model) into a validated store entry.

Importing this package is cheap; torch, transformers, optimum and NNCF are imported only inside the child
process that converts, so the bot never holds their memory.
"""

from model_store.convert.job import ConversionRequest, run_conversion
from model_store.convert.process import convert_async, convert_in_subprocess

__all__ = ["ConversionRequest", "convert_async", "convert_in_subprocess", "run_conversion"]
