"""Shared helpers for the test-suite (fake Hugging Face Hub server, ...)."""
