"""Read the Prometheus endpoints of a running mesh into plain numbers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 3.0

# A sample key: the sample name and its labels, sorted, as (name, value) pairs.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    """Every sample of one endpoint at one moment; `error` is set when it failed."""

    url: str
    samples: dict[SampleKey, float]
    error: str | None = None

    def total(self, name: str, **labels: str) -> float:
        """Return the sum of the samples called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= set(sample_labels)
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Return the samples called `name`, keyed by the value of one label."""
        found: dict[str, float] = {}
        for (sample, labels), value in self.samples.items():
            if sample == name:
                key = dict(labels).get(label)
                if key is not None:
                    found[key] = found.get(key, 0.0) + value
        return found

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        """Return the (upper bound, cumulative count) pairs of a histogram."""
        pairs = [
            (float(dict(labels)["le"]), value)
            for (sample, labels), value in self.samples.items()
            if sample == f"{histogram}_bucket"
        ]
        return sorted(pairs)


def parse_samples(text: str) -> dict[SampleKey, float]:
    """Parse Prometheus text exposition into {(name, labels): value}."""
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = float(sample.value)
    return samples


async def scrape(client: httpx.AsyncClient, url: str) -> Scrape:
    """Fetch and parse one endpoint; a failure is returned, not raised."""
    try:
        response = await client.get(url, timeout=SCRAPE_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        # Timeouts carry no text: name the failure in any case.
        detail = str(exc) or "no answer in time"
        return Scrape(url, {}, error=f"{type(exc).__name__}: {detail}")
    return Scrape(url, parse_samples(response.text))


async def scrape_all(urls: Mapping[str, str]) -> dict[str, Scrape]:
    """Scrape every named endpoint at once."""
    async with httpx.AsyncClient() as client:
        results = await asyncio.gather(*(scrape(client, url) for url in urls.values()))
    return dict(zip(urls, results, strict=True))


def delta(before: Scrape, after: Scrape) -> dict[SampleKey, float]:
    """Return after minus before for every sample present in `after`."""
    return {
        key: value - before.samples.get(key, 0.0)
        for key, value in after.samples.items()
    }


def quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """Estimate a quantile from cumulative histogram buckets, as Prometheus does.

    Interpolates linearly inside the bucket that contains the quantile. Returns
    None for an empty histogram, and the highest finite bound when the
    quantile falls in the +Inf bucket.
    """
    pairs = list(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_delta(
    before: Scrape, after: Scrape, histogram: str
) -> list[tuple[float, float]]:
    """Return the cumulative buckets of observations made between two scrapes."""
    earlier = dict(before.buckets(histogram))
    return [
        (bound, count - earlier.get(bound, 0.0))
        for bound, count in after.buckets(histogram)
    ]
