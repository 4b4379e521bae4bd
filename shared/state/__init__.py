"""The service's state: the store in Redis (``store``, one small module per thing it keeps: records,
results and their cache, the backlog, workers' liveness, counters, events, restoring from disk), the
scheduling policy, retention, the result files, and the one settings model.

May import every other package of ``shared``; nothing there imports this one.
"""
