/**
 * Start `test/helpers/runtime-child.ts` as a child process and wait for its
 * ready line: for tests that `kill -9` the runtime, restart it on the same
 * dataDir, or change its resource limits (`prlimit`).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

const CHILD = resolve(__dirname, 'runtime-child.ts');

export interface RuntimeChild {
  proc: ChildProcess;
  pid: number;
  port: number;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Start the runtime child and wait for its ready line (fails loudly with its stderr). */
export async function startRuntimeChild(configFile: string): Promise<RuntimeChild> {
  const proc = spawn(process.execPath, ['--import', 'tsx', CHILD, configFile], {
    cwd: resolve(__dirname, '../..'),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
    if (err.length > 100_000) err = err.slice(-50_000);
  });
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const lines = createInterface({ input: proc.stdout! });
  const ready = new Promise<number>((resolveReady, reject) => {
    lines.on('line', (line) => {
      try {
        const msg = JSON.parse(line) as { ready?: boolean; port?: number };
        if (msg.ready && typeof msg.port === 'number') resolveReady(msg.port);
      } catch {
        // not the ready line
      }
    });
    exited.then((code) => reject(new Error(`runtime child exited (${code}) before ready:\n${err}`)));
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`runtime child not ready within 20 s:\n${err}`)), 20_000);
  });
  try {
    const port = await Promise.race([ready, timeout]);
    return { proc, pid: proc.pid!, port, stderr: () => err, exited };
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** SIGKILL the child if it still runs, and wait for it to be gone. */
export async function killRuntimeChild(child: RuntimeChild | undefined): Promise<void> {
  if (!child || child.proc.exitCode !== null || child.proc.signalCode !== null) return;
  child.proc.kill('SIGKILL');
  await child.exited;
}

/**
 * Write `<dir>/site.yaml` for a runtime child: data in `<dir>/data`, HTTP on
 * a free loopback port, warnings only; `uplink` is the flow-style YAML map.
 */
export function writeSiteConfig(dir: string, c: { site: string; edge: string; uplink: string }): string {
  const file = join(dir, 'site.yaml');
  writeFileSync(
    file,
    [
      `site: ${c.site}`,
      `edge: ${c.edge}`,
      'dataDir: ./data',
      'http: { host: 127.0.0.1, port: 0 }',
      `uplink: ${c.uplink}`,
      `privacy: { siteKey: ${c.site}-test-site-key-0123456789 }`,
      'log: { level: warn }',
      '',
    ].join('\n'),
  );
  return file;
}
