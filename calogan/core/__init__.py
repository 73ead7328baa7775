"""Shared machinery with no physics in it: bad-input errors, runtime helpers, WGAN-GP building blocks."""
