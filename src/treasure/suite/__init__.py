"""The bundled long-tail task suite: instruction data whose answers have exact checkers (see tasks.py)."""
