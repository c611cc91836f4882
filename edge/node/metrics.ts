/**
 * Prometheus metrics for `GET /_edge/metrics`, fed by the per-request
 * record (`onRequest`). A private registry per node so several nodes in
 * one process (tests, the shield beside an edge) do not collide.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestRecord } from '../core/app.js';
import type { CacheStore } from '../core/store/types.js';

export interface EdgeMetrics {
  observe(record: RequestRecord): void;
  render(): Promise<string>;
}

export function createEdgeMetrics(store: CacheStore, options: { defaultMetrics?: boolean } = {}): EdgeMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const requests = new Counter({
    name: 'edge_requests_total',
    help: 'Requests answered, by cache outcome and status class.',
    labelNames: ['outcome', 'status'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'edge_request_duration_seconds',
    help: 'Time to response headers at this node.',
    labelNames: ['outcome'] as const,
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [registry],
  });
  const originLatency = new Histogram({
    name: 'edge_origin_latency_seconds',
    help: 'Time to the origin response headers.',
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    registers: [registry],
  });
  new Gauge({
    name: 'edge_cache_bytes',
    help: 'Bytes held by the cache store.',
    registers: [registry],
    collect() {
      this.set(store.stats().bytes);
    },
  });
  new Gauge({
    name: 'edge_cache_entries',
    help: 'Entries held by the cache store.',
    registers: [registry],
    collect() {
      this.set(store.stats().entries);
    },
  });
  // Label children cached: resolving labels per observation is measurable on the hit path.
  const requestChildren = new Map<string, ReturnType<typeof requests.labels>>();
  const durationChildren = new Map<string, ReturnType<typeof duration.labels>>();
  return {
    observe(record) {
      const outcome = record.outcome ?? 'none';
      const status = `${Math.floor(record.status / 100)}xx`;
      const requestKey = `${outcome} ${status}`;
      let counter = requestChildren.get(requestKey);
      if (!counter) requestChildren.set(requestKey, (counter = requests.labels(outcome, status)));
      counter.inc();
      let histogram = durationChildren.get(outcome);
      if (!histogram) durationChildren.set(outcome, (histogram = duration.labels(outcome)));
      histogram.observe(record.durationMs / 1000);
      if (record.originMs !== undefined) originLatency.observe(record.originMs / 1000);
    },
    render: () => registry.metrics(),
  };
}
