"""Uplinks take batches from the outbox and confirm each one once it is delivered: files.py
(the local default: a directory on the device) and iothub.py (Azure IoT Hub)."""
