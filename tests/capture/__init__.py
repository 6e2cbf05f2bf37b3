"""Tests for capture."""
