"""Rollout load tests: Locust users that act as Yiyuan's validators and gates.

Layout, bottom to top:

- ``scenario``: the traffic model (routes and stops, sites, rider categories,
  media, bad traffic) and the run specification handed to Locust.
- ``models``: the built-in traffic models (TOML), Yiyuan's first.
- ``curves``: user counts over time for the load shapes, as plain functions.
- ``fixture``: provisioning (issuer key, devices, holders, deny-list rows)
  and the fixture file that Locust processes read.
- ``traffic``: turns a fixture holder into a tap request of a given kind.
- ``answers``: the per-process file of acknowledged answers.
- ``check``: compares those answers with the journal in PostgreSQL.
- ``report``: thresholds from Locust's CSV files and the PNG chart.
- ``shapes`` and ``locustfile``: the only modules that import Locust.

Locust monkey-patches the standard library with gevent, so it runs only in
its own processes (``tapgate loadtest`` starts them). Nothing outside
``shapes`` and ``locustfile`` imports it.
"""
