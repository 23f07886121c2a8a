"""What development needs and the product does not: synthetic Phi-3-vision checkpoints, stand-ins for the
Telegram Bot API server and the Hugging Face Hub, and the harness that runs the bot against them.

Tests and benchmarks import it; the runtime wheel leaves it out (pyproject.toml), and bot/, engine/ and
model_store/ never import it (``phi3bot synthetic`` asks for it and says when it is missing).
"""
