"""The parts of scripts/benchmark.py: figures.py is pure (parsing, statistics,
tables) and tested without Docker; stack.py and peer.py drive Docker."""
