"""Tests of the web side (push endpoints)."""
