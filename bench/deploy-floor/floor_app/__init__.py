"""Flower's floor for a deployed round (see ``bench/deploy_rounds.py``)."""
