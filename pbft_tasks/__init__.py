"""PBFT consensus: the pure core (``pbft_tasks.core``) and its adapters."""
