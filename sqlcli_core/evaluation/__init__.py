"""Evaluation: playing policies in ALE and aggregating scores across games."""
