"""The ledger audit: ``hdpbf verify`` and ``hdpbf bench verify`` (verify.py)."""
