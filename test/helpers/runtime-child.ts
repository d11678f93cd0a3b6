/**
 * Runs a Runtime from a site config in a child process, for tests that kill it
 * (`kill -9`) and restart it on the same dataDir.
 *
 *   node --import tsx test/helpers/runtime-child.ts <site.yaml>
 *
 * Logs go to stderr; stdout carries exactly one line once the runtime is up:
 * `{"ready":true,"port":<bound http port>,"pid":<pid>}`. SIGTERM stops it gracefully.
 */
import pino from 'pino';
import { loadConfig } from '../../edge/config.js';
import { createLogger } from '../../edge/log.js';
import { Runtime } from '../../edge/runtime.js';

async function main(): Promise<void> {
  const file = process.argv[2];
  if (!file) throw new Error('usage: runtime-child.ts <site.yaml>');
  const config = loadConfig(file);
  const log = createLogger({ level: config.log.level, destination: pino.destination(2) });
  const runtime = new Runtime({ config, log, version: 'test-child' });
  await runtime.start();
  process.stdout.write(`${JSON.stringify({ ready: true, port: runtime.port, pid: process.pid })}\n`);
  process.once('SIGTERM', () => {
    runtime.stop().finally(() => process.exit(0));
  });
}

main().catch((err) => {
  process.stderr.write(`runtime-child failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
