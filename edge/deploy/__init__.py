"""Deployments: intake over MQTT, the lifecycle, durable bookkeeping."""
