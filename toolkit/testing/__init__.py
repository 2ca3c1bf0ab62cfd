"""Generators of broken inputs for the reliability tests."""
