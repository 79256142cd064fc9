"""Badge Forge: an Elixir app enqueues badges, Python renders them, Elixir prints them.

The example of the article "Bridging Elixir and Python with Oban", on oban_pro. The Elixir app
inserts ``badge_forge.generator.GenerateBadge`` jobs in queue ``badges``; an oban_pro node
serving that queue renders each badge to a PDF with WeasyPrint on its worker processes and
enqueues ``BadgeForge.PrintCenter`` in queue ``printing``, which the Elixir app serves.

- :mod:`badge_forge.generator`: the worker (what the Elixir side names).
- :mod:`badge_forge.badge`: rendering one badge to PDF.
- :mod:`badge_forge.elixir_side`: the rows the Elixir app writes and reads, in SQL, so the
  example runs where there is no Elixir.
- ``python -m badge_forge``: the whole round trip on the embedded PostgreSQL (see ``--help``).
- ``elixir/``: the Elixir half, as a snippet for an app that has Oban.
"""
