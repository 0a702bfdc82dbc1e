"""The MQTT connection of the core."""
