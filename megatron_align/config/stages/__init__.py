"""One schema file per stage: its keys (the seed documents' names), defaults and one-line checks; torch-free,
so a typo on the command line fails before any process starts."""
