"""The OpenAI-compatible gateway: weighted canary routing, retries, breakers, admin API."""
