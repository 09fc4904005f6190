"""IoT Hub's size limits and the agent's message sizes derived from them: the one place these
numbers are written. The C core's defaults (am_sink_default_options, the audit parser's
batch_bytes) repeat DEFAULT_MAX_MESSAGE_BYTES; tests/test_envelope.py checks they agree.

IoT Hub refuses a device-to-cloud message over 256 KiB (body plus properties) and meters
messages in 4 KiB units. Upload_MaxMessageBytes (agent.config) is the body's budget: 60 units
by default, at most 62, so that the properties the uplink adds always fit in what is left.
"""

from __future__ import annotations

# A device-to-cloud message, body and properties, is at most this (IoT Hub's quota).
HUB_MESSAGE_LIMIT = 256 * 1024
# IoT Hub counts messages in units of this many bytes (the billing unit).
HUB_BILLING_UNIT = 4 * 1024
# What a message's body may use at most: the rest of HUB_MESSAGE_LIMIT stays for the message
# properties (system properties, the uplink's custom ones, the topic's property bag).
PROPERTY_RESERVE = 2 * HUB_BILLING_UNIT
MAX_MESSAGE_BYTES = HUB_MESSAGE_LIMIT - PROPERTY_RESERVE  # 253952: 62 units
# The default body budget (Upload_MaxMessageBytes) and the core's default batch_bytes.
DEFAULT_MAX_MESSAGE_BYTES = 60 * HUB_BILLING_UNIT  # 245760
# The smallest Upload_MaxMessageBytes: one unit.
MIN_MESSAGE_BYTES = HUB_BILLING_UNIT
# The core refuses smaller batches (batches_init).
CORE_MIN_BATCH_BYTES = 1024
