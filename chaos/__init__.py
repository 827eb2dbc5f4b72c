"""Chaos run: leads through the running stack while processes die, then a ledger of what survived."""
