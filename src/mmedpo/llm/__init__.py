"""Clients for language-model endpoints (OpenAI-compatible chat)."""
