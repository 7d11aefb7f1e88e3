"""Offline training toolkit: BBC topic classifier (BiLSTM) and Sherlock Holmes char-LSTM generator.

Importing this package does no work; run commands with ``python -m training <command> --help``.
"""
