import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './wait.js';

/** A socat PTY pair: two linked pseudo-terminals with stable symlink paths `a` and `b`. */
export interface PtyPair {
  a: string;
  b: string;
  /** Kill socat: both PTYs vanish (what a USB unplug looks like to the open ports). */
  kill(): Promise<void>;
  /** Kill (if running) and start socat again on the same paths (a replug). */
  restart(): Promise<void>;
}

/**
 * Start `socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B` in `dir`
 * and wait (with a deadline) until both links exist. Fails loudly if socat
 * is missing or does not come up.
 */
export async function openPtyPair(dir: string, names: [string, string] = ['ptyA', 'ptyB']): Promise<PtyPair> {
  const a = join(dir, names[0]);
  const b = join(dir, names[1]);
  let proc: ChildProcess | undefined;
  let stderr = '';

  const start = async () => {
    stderr = '';
    const p = spawn('socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    proc = p;
    p.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    let spawnError: Error | undefined;
    p.once('error', (err) => {
      spawnError = err;
    });
    await waitFor(
      () => {
        // A missing or exited socat will not come up: fail at once (failFast) instead of after the deadline.
        if (spawnError) throw spawnError;
        if (p.exitCode !== null || p.signalCode !== null)
          throw new Error(`socat exited (${p.exitCode ?? p.signalCode})`);
        return stderr.includes('starting data transfer loop') && existsSync(a) && existsSync(b);
      },
      {
        timeoutMs: 5000,
        failFast: true,
        message: () => `socat PTY pair at ${a} / ${b} (stderr: ${stderr.trim()})`,
      },
    );
  };

  const kill = async () => {
    const p = proc;
    proc = undefined;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGTERM');
    await exited;
    await waitFor(() => !existsSync(a) && !existsSync(b), {
      timeoutMs: 3000,
      message: 'socat links removed',
    });
  };

  await start();
  return {
    a,
    b,
    kill,
    restart: async () => {
      await kill();
      await start();
    },
  };
}
