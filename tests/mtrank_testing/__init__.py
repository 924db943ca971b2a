"""Helpers for mtrank's tests only: small data, trained models, a headless browser."""
