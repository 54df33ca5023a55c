"""The Anthropic Messages API door: POST /v1/messages and /v1/messages/count_tokens (routes.py)."""

from gateway.doors.messages.routes import setup

__all__ = ["setup"]
