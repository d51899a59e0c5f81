"""Receivers that turn page signals into build requests (connected in ``apps.ready``)."""
