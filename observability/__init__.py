"""What every process of the product shares: logging and bounded retry; imports neither Dagster nor torch."""
