"""Inference engines: the embedded CPU engine and the vLLM launcher, one OpenAI API."""
