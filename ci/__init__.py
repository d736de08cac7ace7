"""The Concourse pipelines (``ci/*.yml``, ``ci/tasks/``) and the tools that validate and run them locally."""
