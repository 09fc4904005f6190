"""iot-micro-agent: a security micro agent for embedded Linux IoT devices."""

__version__ = "0.1.0"
