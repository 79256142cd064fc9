"""Periodic maintenance that calls into the database on the leader's (or every node's) behalf:
stager, lifeline, pruner, cron, queue gauges and gossip. Each module holds one plugin.
"""
