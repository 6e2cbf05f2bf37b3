"""Tests for harden."""
