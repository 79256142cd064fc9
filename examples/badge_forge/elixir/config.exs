# config/config.exs of the Elixir app: one Oban instance on the database the Python node uses.
# The Elixir app serves `printing` only; `badges` is served by Python.
import Config

config :badge_forge, ecto_repos: [BadgeForge.Repo]

config :badge_forge, BadgeForge.Repo,
  url: System.get_env("DATABASE_URL", "postgres://postgres@localhost/badge_forge")

config :badge_forge, Oban,
  repo: BadgeForge.Repo,
  queues: [printing: 5]
