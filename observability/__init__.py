"""What every process of the product shares: logging, bounded retry and its settings ($MLOPS_HOME); imports neither Dagster nor torch."""
