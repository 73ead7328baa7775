"""Codalab submissions: results and code zips, and the self-contained code-submission template."""
