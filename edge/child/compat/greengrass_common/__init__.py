"""Greengrass V1's `greengrass_common` package, as the core provides it to workers."""
