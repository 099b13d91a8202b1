"""``tapgate demo``: one command runs a compressed day of Yiyuan traffic end to end.

The modules follow the steps of the run: :mod:`~tapgate.demo.world` makes
the county from a seed, :mod:`~tapgate.demo.plan` plans its day,
:mod:`~tapgate.demo.provision` registers everything through the product's
tools, :mod:`~tapgate.demo.services` runs PostgreSQL and the gateway,
:mod:`~tapgate.demo.drive` sends the taps, :mod:`~tapgate.demo.dayend`
settles the day, :mod:`~tapgate.demo.checks` defines the invariants, and
:mod:`~tapgate.demo.summary` and :mod:`~tapgate.demo.report` present the
result. :mod:`~tapgate.demo.run` ties them together.
"""
