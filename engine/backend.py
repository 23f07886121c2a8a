"""What answers questions: the local engine (the model in a process of this machine) or a model service
reached over the OpenAI chat-completions protocol.  Both take the same questions and give the same events;
callers that need to tell them apart (what /model shows, whether /convert can load here) ask which it is."""

from __future__ import annotations

from engine.engine import Engine
from engine.remote_engine import RemoteEngine

Backend = Engine | RemoteEngine
