"""Signed, durable HTTP callbacks."""
