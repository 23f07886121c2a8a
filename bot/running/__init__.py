"""The bot as a process: start-up checks, its secrets, its health file, the webhook, and the engine built from
settings.  A new backend for the engine is chosen in runtime.py."""
