"""Secrets: fetching from Secrets Manager, the encrypted local store, the core key."""
