"""A local Azure IoT Hub stand-in for tests: Debian's mosquitto behind a TLS gate that checks
IoT Hub credentials, and a hub client that serves the device twin and records telemetry.
See README.md beside this file."""
