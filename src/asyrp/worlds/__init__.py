"""Offline worlds: small datasets and models in which the whole method runs on a CPU."""
