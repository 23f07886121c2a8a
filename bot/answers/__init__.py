"""A question put to the engine and its answer given: the conversation claimed (bot/admission/answers_in_progress.py),
the engine asked, the exchange stored, and the engine's events streamed as the reply."""
