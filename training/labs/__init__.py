"""Recurrent-network labs: small, seeded experiments on why recurrent models behave as they do.

Each lab is one module with ``add_arguments(parser)`` and ``run(args, ctx) -> LabResult`` and runs as
``python -m training lab NAME`` (``--quick`` for tests, ``--device cuda`` on a GPU). docs/labs.md has the
question, command, measured result and plot of each. Importing a lab does no work.
"""

# lab name -> (module, one-line help)
LABS: dict[str, tuple[str, str]] = {
    "numpy-rnn": ("training.labs.numpy_rnn", "NumPy RNN/LSTM with hand-written BPTT, gradient-checked"),
    "echo": ("training.labs.echo", "remember the first bit: RNN vs GRU vs LSTM against sequence length"),
    "palindrome": ("training.labs.palindrome", "palindrome detection: unidirectional vs bidirectional"),
    "sine": ("training.labs.sine", "noisy sine forecasting: one-step and closed-loop error against horizon"),
    "hidden-states": ("training.labs.hidden_states", "PCA of hidden-state trajectories (sine, classifier, char)"),
    "char-vs-word": ("training.labs.char_vs_word", "character vs word LSTM generators in bits per character"),
    "shapes": ("training.labs.shapes", "nn.RNN/LSTM/GRU shapes, h_n/c_n layout and a hand-computed RNN step"),
}
