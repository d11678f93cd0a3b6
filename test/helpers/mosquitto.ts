import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A Mosquitto broker run by a test. */
export interface TestMosquitto {
  port: number;
  /** `mqtt://127.0.0.1:{port}` (`mqtts://` with TLS) */
  url: string;
  /** Pid of the current process (changes on restart); undefined while it is not running. */
  readonly pid: number | undefined;
  /** SIGTERM and wait for exit; removes the temp dir unless it was given. */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit (a crash: no clean disconnects, no wills from the broker itself). */
  kill(): Promise<void>;
  /** Start again on the same port (after stop() or kill()). */
  restart(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (from listen(0)). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** A TLS listener: PEM file paths; with `requireCertificate` clients must present a cert signed by `cafile`. */
export interface MosquittoTls {
  cafile: string;
  certfile: string;
  keyfile: string;
  requireCertificate?: boolean;
}

let checked = false;

/**
 * Start Mosquitto on 127.0.0.1 with a config in a temp dir: anonymous,
 * no persistence and `max_queued_messages 0` (with the default limit QoS 1
 * bursts to a slow subscriber are dropped; see NOTES.md). Throws — never
 * skips — when mosquitto is not installed or does not come up within 5 s.
 */
export async function startMosquitto(
  opts: { port?: number; dir?: string; tls?: MosquittoTls; extraConfig?: string[] } = {},
): Promise<TestMosquitto> {
  if (!checked) {
    const r = spawnSync('mosquitto', ['-h']);
    if (r.error)
      throw new Error(`mosquitto is not installed (apt-get install mosquitto): ${r.error.message}`);
    checked = true;
  }
  const port = opts.port ?? (await freePort());
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'edgeward-mosquitto-')));
  const conf = join(dir, 'mosquitto.conf');
  let proc: ChildProcess | null = null;
  let stderr = '';

  const writeConf = async () => {
    await mkdir(dir, { recursive: true });
    await writeFile(
      conf,
      [
        `listener ${port} 127.0.0.1`,
        ...(opts.tls
          ? [
              `cafile ${opts.tls.cafile}`,
              `certfile ${opts.tls.certfile}`,
              `keyfile ${opts.tls.keyfile}`,
              `require_certificate ${opts.tls.requireCertificate ? 'true' : 'false'}`,
            ]
          : []),
        'allow_anonymous true',
        'persistence false',
        'max_queued_messages 0',
        'max_inflight_messages 0',
        // As a central broker for alarms should run: without it Nagle holds a lone small
        // message until the subscriber ACKs the previous segment (tens of ms).
        'set_tcp_nodelay true',
        ...(opts.extraConfig ?? []),
        'log_dest stderr',
        'log_type error',
        'log_type warning',
        '',
      ].join('\n'),
    );
  };

  const launch = async (): Promise<void> => {
    await writeConf();
    stderr = '';
    const p = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    proc = p;
    p.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    let exited = false;
    p.once('exit', () => {
      exited = true;
    });
    const deadline = Date.now() + 5000;
    for (;;) {
      if (exited) throw new Error(`mosquitto exited at start (port ${port}): ${stderr}`);
      if (await portAccepts(port)) return;
      if (Date.now() > deadline) {
        p.kill('SIGKILL');
        throw new Error(`mosquitto did not accept connections on ${port} within 5 s: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    const p = proc;
    proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      p.kill(sig);
    });
  };

  await launch();
  return {
    port,
    url: `${opts.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`,
    get pid() {
      // Never a sentinel such as -1: a script's process.kill(pid) with -1 signals every process it
      // may (a review's repro took down the box's PostgreSQL, Mosquitto and the rest that way).
      return proc && proc.exitCode === null && proc.signalCode === null ? proc.pid : undefined;
    },
    stop: async () => {
      await signal('SIGTERM');
      if (ownDir) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
    kill: () => signal('SIGKILL'),
    restart: async () => {
      await signal('SIGTERM');
      await launch();
    },
  };
}
