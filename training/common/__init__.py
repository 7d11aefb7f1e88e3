"""What both models' training code shares: command-line plumbing and errors (``cli``), files and JSON
(``files``), seeds, devices and library versions (``devices``), PNG plots (``plots``) and the model-agnostic
Optuna helpers (``study``). Nothing here knows about a particular model."""
