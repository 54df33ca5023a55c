"""The OpenAI Responses API (POST /v1/responses) in front of every provider.

``setup(app)`` adds the routes and the response store; see routes.py for the
two paths (a provider's own endpoint when it has one, the chat pipeline for the rest).
"""

from gateway.doors.responses.routes import setup

__all__ = ["setup"]
