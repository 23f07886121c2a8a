"""Text from people, files and earlier answers cannot speak for the chat template.

Phi-3's tokenizer reads ``<|end|>``, ``<|system|>`` or ``<s>`` inside a message as the template's own markers,
and OpenVINO GenAI reads ``<|image_N|>`` and ``<ov_genai_image_N>`` as references to attached images: a
question could close its own message and open a system one (overriding a group's persona), and a stray image
tag fails the answer.  A word joiner (U+2060, invisible) after the ``<`` keeps every character a person wrote
while no marker matches any more; the model reads it as ordinary text.
"""

from __future__ import annotations

import re

WORD_JOINER = "\u2060"
# The starts of Phi-3's special tokens (all ``<|…|>``), its sentencepiece markers, and GenAI's own image and
# video tags.
_MARKER_START = re.compile(r"<(?=\||/?s>|unk>|ov_genai_)")


def as_plain_text(text: str) -> str:
    """``text`` with every template marker and image tag broken, unchanged otherwise (idempotent)."""
    return _MARKER_START.sub("<" + WORD_JOINER, text)
