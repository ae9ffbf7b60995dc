"""Helpers the tests share: paths, sample inputs, real server processes, metric parsing."""
