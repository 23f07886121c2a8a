"""The model service: the engine served over the OpenAI chat-completions protocol (``phi3bot serve``), for a bot
(or any OpenAI client) on another machine."""
