"""Answering: engines, the chat service and its HTTP API (OpenAI-compatible)."""
