"""Logging shared by every process of the product; imports neither Dagster nor torch."""
