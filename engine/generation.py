"""How answers are generated: the settings a self-hoster controls, turned into a GenAI GenerationConfig."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

# How an answer ended: the one definition, which the history store extends with "streaming" (a test holds the
# schema's CHECK to both).
Status = Literal["complete", "cancelled", "timeout", "failed"]

# Another take on a question answered greedily samples at this temperature: low enough to stay on topic, high
# enough that the text differs.
RETRY_TEMPERATURE = 0.5


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy: the same question gets the same answer
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    system_prompt: str = ""
    timeout_seconds: float = 600.0
    ignore_eos: bool = False  # benchmarks only: a fixed number of tokens, whatever the model says
    seed: int | None = None  # of the sampler; None: GenAI's own

    def another_take(self, seed: int) -> GenerationSettings:
        """Settings for answering a question again: greedy choice would write the same text, so a new take
        samples (at RETRY_TEMPERATURE when the configured choice is greedy) from a seed of its own."""
        return replace(self, temperature=self.temperature or RETRY_TEMPERATURE, seed=seed)

    def for_request(self, system_prompt: str | None, seed: int | None) -> GenerationSettings:
        """These settings with a conversation's own system prompt (None: this one), and for another take on a
        question already answered (``seed``) sampling from that seed."""
        settings = self if system_prompt is None else replace(self, system_prompt=system_prompt)
        return settings if seed is None else settings.another_take(seed)

    def to_genai(self) -> Any:
        import openvino_genai as genai

        config = genai.GenerationConfig()
        config.max_new_tokens = self.max_new_tokens
        config.repetition_penalty = self.repetition_penalty
        config.ignore_eos = self.ignore_eos
        if self.temperature > 0:
            config.do_sample = True
            config.temperature = self.temperature
            config.top_p = self.top_p
            if self.seed is not None:
                config.rng_seed = self.seed
        else:
            config.do_sample = False
        return config
