"""The OpenAI Responses API (POST /v1/responses) in front of every provider.

``setup(app)`` adds the routes and the response store; see routes.py for the
two paths (OpenAI's own endpoint for ``openai/…``, the chat pipeline for the rest).
"""

from gateway.responses.routes import setup

__all__ = ["setup"]
