"""Periodic maintenance on the leader's (or every node's) behalf: stager, lifeline, pruner,
gauges and gossip, each a plugin (:mod:`.base`: the protocol, and what a plugin sees of its node)
that talks to the database through the :class:`~oban_pro.store.Store`; and the cron scheduler.
"""
