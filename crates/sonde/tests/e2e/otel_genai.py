"""Exports GenAI semantic-convention histograms to Sonde with the OpenTelemetry
Python SDK over OTLP/gRPC, in two exports, with the temporality given.

usage: otel_genai.py GRPC_ADDR TOKEN cumulative|delta
"""

import sys

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

addr, token, temporality = sys.argv[1], sys.argv[2], sys.argv[3]
preferred = {
    Histogram: AggregationTemporality.DELTA
    if temporality == "delta"
    else AggregationTemporality.CUMULATIVE
}
exporter = OTLPMetricExporter(
    endpoint=f"http://{addr}",
    insecure=True,
    headers=(("authorization", f"Bearer {token}"),),
    preferred_temporality=preferred,
)
# A long interval: exports happen only on force_flush, so the test knows each one.
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
provider = MeterProvider(
    resource=Resource.create({"service.name": "sonde-e2e"}), metric_readers=[reader]
)
meter = provider.get_meter("genai-test", "1.0")

# Bucket boundaries the GenAI semantic conventions recommend.
tokens = meter.create_histogram(
    "gen_ai.client.token.usage",
    unit="{token}",
    description="Measures number of input and output tokens used",
    explicit_bucket_boundaries_advisory=[
        1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
        16777216, 67108864,
    ],
)
duration = meter.create_histogram(
    "gen_ai.client.operation.duration",
    unit="s",
    description="GenAI operation duration",
    explicit_bucket_boundaries_advisory=[
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
        40.96, 81.92,
    ],
)
# `gen_ai.system` is the older spelling of `gen_ai.provider.name`.
attrs = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o",
}


def call(input_tokens, output_tokens, seconds):
    tokens.record(input_tokens, {**attrs, "gen_ai.token.type": "input"})
    tokens.record(output_tokens, {**attrs, "gen_ai.token.type": "output"})
    duration.record(seconds, attrs)


call(100, 50, 0.5)
assert provider.force_flush(30_000), "first export failed"
call(300, 2000, 1.5)
assert provider.force_flush(30_000), "second export failed"
provider.shutdown()
print("exported")
