"""Unit tests: pure code only, no MongoDB and no Redis (run them with `pytest -m unit tests/unit`)."""
