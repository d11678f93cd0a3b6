import { createLogger, type Logger } from '../../edge/log.js';

/** A logger (the runtime's, redaction included) whose records the test can read, parsed, as they are written. */
export function captureLogger(level = 'debug'): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger({ level, destination: { write: (s: string) => void lines.push(JSON.parse(s)) } });
  return { log, lines };
}
