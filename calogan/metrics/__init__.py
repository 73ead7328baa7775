"""Judging generated showers: the competition score (PRD over embeddings and statistics) and stricter tests."""
