"""Codalab scoring program (``score``) and the organiser's bundle builder (``bundle``)."""
