"""Operations: ``hdpbf up/status/down`` (stack.py) on the process records of launcher.py."""
