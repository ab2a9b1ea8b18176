"""Fake partner APIs speaking the real OpenAI, Anthropic and Gemini wire formats."""
