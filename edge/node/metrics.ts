/**
 * Prometheus metrics for `GET /_edge/metrics`, fed by the per-request
 * record (`onRequest`). Per request the node only bumps plain numbers in
 * fixed arrays (no label lookup, no object per observation); the numbers
 * become prom-client metrics at scrape time, through `collect` callbacks
 * and a small histogram whose `get()` reads the arrays. prom-client still
 * renders the text and, in cluster mode, aggregates workers (`sum`).
 * A private registry per node, so several nodes in one process (tests, a
 * shield beside an edge) do not collide.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValueWithName } from 'prom-client';
import type { RequestRecord } from '../core/app.js';
import type { CacheOutcome } from '../core/cache-status.js';
import type { CacheStore } from '../core/store/types.js';

export interface EdgeMetrics {
  observe(record: RequestRecord): void;
  render(): Promise<string>;
  readonly registry: Registry;
}

const OUTCOMES: readonly (CacheOutcome | 'none')[] = ['hit', 'miss', 'stale', 'revalidated', 'bypass', 'error', 'none'];
const OUTCOME_INDEX = new Map(OUTCOMES.map((outcome, i) => [outcome, i]));
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;

const DURATION_BUCKETS = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5];
const ORIGIN_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30];

/**
 * A histogram kept as arrays of counts, one row per label value, turned
 * into prom-client's metric shape when scraped. prom-client's own
 * `Histogram.observe` resolves labels and walks objects per call, which is
 * measurable on a cache hit that costs a few microseconds.
 */
class ArrayHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #counts: Float64Array[];
  readonly #sums: Float64Array;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
    /** Label name and its values, or undefined for an unlabelled histogram. */
    private readonly label?: { name: string; values: readonly string[] },
  ) {
    const rows = label?.values.length ?? 1;
    this.#counts = Array.from({ length: rows }, () => new Float64Array(buckets.length + 1));
    this.#sums = new Float64Array(rows);
  }

  observe(value: number, row = 0): void {
    const counts = this.#counts[row]!;
    let i = 0;
    while (i < this.buckets.length && value > this.buckets[i]!) i++;
    counts[i]!++;
    this.#sums[row]! += value;
  }

  get(): MetricObjectWithValues<MetricValueWithName<string>> {
    const values: MetricValueWithName<string>[] = [];
    this.#counts.forEach((counts, row) => {
      const total = counts.reduce((a, b) => a + b, 0);
      const labels: Record<string, string> = this.label ? { [this.label.name]: this.label.values[row]! } : {};
      if (this.label && total === 0) return;
      let cumulative = 0;
      this.buckets.forEach((bound, i) => {
        cumulative += counts[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: bound }, value: cumulative });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: '+Inf' }, value: total });
      values.push({ metricName: `${this.name}_sum`, labels, value: this.#sums[row]! });
      values.push({ metricName: `${this.name}_count`, labels, value: total });
    });
    return { name: this.name, help: this.help, type: 'histogram' as never, values, aggregator: 'sum' } as unknown as MetricObjectWithValues<MetricValueWithName<string>>;
  }

  reset(): void {
    for (const counts of this.#counts) counts.fill(0);
    this.#sums.fill(0);
  }
}

export function createEdgeMetrics(store: CacheStore, options: { defaultMetrics?: boolean } = {}): EdgeMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });

  // requests[outcome * 5 + statusClass]; bytes[outcome]
  const requests = new Float64Array(OUTCOMES.length * STATUS_CLASSES.length);
  const bytes = new Float64Array(OUTCOMES.length);

  new Counter({
    name: 'edge_requests_total',
    help: 'Requests answered, by cache outcome and status class.',
    labelNames: ['outcome', 'status'] as const,
    registers: [registry],
    collect() {
      this.reset();
      requests.forEach((count, i) => {
        if (count > 0) this.inc({ outcome: OUTCOMES[Math.floor(i / STATUS_CLASSES.length)]!, status: STATUS_CLASSES[i % STATUS_CLASSES.length]! }, count);
      });
    },
  });
  new Counter({
    name: 'edge_response_body_bytes_total',
    help: 'Body bytes sent to clients, by cache outcome (hit bytes are the origin traffic saved).',
    labelNames: ['outcome'] as const,
    registers: [registry],
    collect() {
      this.reset();
      bytes.forEach((count, i) => {
        if (count > 0) this.inc({ outcome: OUTCOMES[i]! }, count);
      });
    },
  });
  const duration = new ArrayHistogram('edge_request_duration_seconds', 'Time to response headers at this node.', DURATION_BUCKETS, {
    name: 'outcome',
    values: OUTCOMES,
  });
  const originLatency = new ArrayHistogram('edge_origin_latency_seconds', 'Time to the origin response headers.', ORIGIN_BUCKETS);
  registry.registerMetric(duration as never);
  registry.registerMetric(originLatency as never);
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

  return {
    registry,
    observe(record) {
      const outcome = OUTCOME_INDEX.get(record.outcome ?? 'none') ?? OUTCOMES.length - 1;
      const statusClass = Math.min(Math.max(Math.floor(record.status / 100) - 1, 0), STATUS_CLASSES.length - 1);
      requests[outcome * STATUS_CLASSES.length + statusClass]!++;
      if (record.bytes !== undefined) bytes[outcome]! += record.bytes;
      duration.observe(record.durationMs / 1000, outcome);
      if (record.originMs !== undefined) originLatency.observe(record.originMs / 1000);
    },
    render: () => registry.metrics(),
  };
}
