"""Serving: inference engines, the OpenAI-compatible gateway, the local supervisor and canary rollout.

``python -m serving up|status|down`` runs the local stack; ``python -m serving.engine`` and
``python -m serving.gateway`` start one engine or the gateway on their own.
"""
