"""The Prometheus text rendering: counters, gauges and histograms as a scraper expects them."""

from __future__ import annotations

from zlh_actors import metrics


def test_counters_gauges_and_histograms_render() -> None:
    m = metrics.Metrics()
    m.describe("zlh_things_total", "things")
    m.inc("zlh_things_total", kind="a")
    m.inc("zlh_things_total", 2, kind="a")
    m.inc("zlh_things_total", kind='b"q')
    m.gauge("zlh_depth", "depth", lambda: [((), 7)])
    m.observe("zlh_call_seconds", 0.02, operation="start")
    m.observe("zlh_call_seconds", 3.0, operation="start")
    text = m.render()
    assert "# TYPE zlh_things_total counter" in text
    assert 'zlh_things_total{kind="a"} 3' in text
    assert 'zlh_things_total{kind="b\\"q"} 1' in text
    assert "zlh_depth 7" in text
    assert 'zlh_call_seconds_bucket{operation="start",le="0.01"} 0' in text
    assert 'zlh_call_seconds_bucket{operation="start",le="0.025"} 1' in text
    assert 'zlh_call_seconds_bucket{operation="start",le="5"} 2' in text
    assert 'zlh_call_seconds_bucket{operation="start",le="+Inf"} 2' in text
    assert 'zlh_call_seconds_count{operation="start"} 2' in text
    assert m.value("zlh_things_total", kind="a") == 3
