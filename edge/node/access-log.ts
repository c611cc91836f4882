/**
 * The access log: one JSON line per request (pino), written in batches so a
 * busy node does not pay a syscall per request, and flushed at least once a
 * second so `tail -f` on a quiet node shows each request as it happens.
 */
import pino, { type Logger } from 'pino';

/** Bytes gathered before a write; a quiet node flushes sooner (see FLUSH_INTERVAL_MS). */
const BATCH_BYTES = 4096;
const FLUSH_INTERVAL_MS = 1000;

export interface AccessLog {
  logger: Logger;
  /** Write what is buffered now, and stop the timer. */
  close(): void;
}

export function createAccessLog(options: { level: string; name: string; fd?: number }): AccessLog {
  const destination = pino.destination({ dest: options.fd ?? 1, minLength: BATCH_BYTES, sync: false });
  const logger = pino({ level: options.level, base: { node: options.name } }, destination);
  const timer = setInterval(() => logger.flush(), FLUSH_INTERVAL_MS);
  timer.unref();
  return {
    logger,
    close() {
      clearInterval(timer);
      logger.flush();
    },
  };
}
