"""Scale-out measured (issue #17, SPEC sections 7 and 8): a fleet of proxy replicas behind
a consistent-hashing balancer, on loopback, and a simulation of larger fleets.

- ``ring``: HAProxy 2.6's consistent-hash ring and ``balance uri`` key, as a pure model;
- ``trace``: seeded Zipf traces of viewers opening studies;
- ``relay``: the archive's doorway, counting requests and bytes per path;
- ``cluster``: the processes (Orthanc's relay, replicas, HAProxy on the reference config);
- ``viewers``: OHIF-like study loads through the balancer;
- ``run``: the three runs (all up, one stopped, back), hashing vs round robin;
- ``sim``: the same ring with LRU caches over long traces; ``report``: tables and chart.

Lives under ``bench/`` because it is a measurement like the rest of the benchmark and
reuses its pieces (``bench.servers``, ``bench.clients``, ``bench.viewer``); the tests'
short form (tests/test_fleet.py) imports it, never the other way round.
"""
