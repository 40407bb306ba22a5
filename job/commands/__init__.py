"""The `job` verbs other than train: what a person runs before a night (`plan`) and the morning
after (`status`, `sample`, `eval`, `report`, `export`, `import-nanogpt`), with what only they use.

The arrows point one way: these modules use the trainer's components (checkpoints, the model,
the run's files, the data), and nothing outside this package but `job/cli.py` imports them
(tests/unit/test_shape.py holds both to it).
"""
