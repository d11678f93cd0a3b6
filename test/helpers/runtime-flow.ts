import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { SiteConfig } from '../../edge/config-types.js';
import { silentLogger } from '../../edge/log.js';
import { Runtime } from '../../edge/runtime.js';

/**
 * An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it: the far
 * end of an `http request` node wired to a node's output, so a test sees what
 * the node sent.
 */
export interface PostSink<T> {
  /** Where the `http request` node posts (`http://127.0.0.1:<port>/out`). */
  url: string;
  /** The parsed bodies, in arrival order. */
  posted: T[];
  close(): Promise<void>;
}

/** Start a {@link PostSink} on a port from listen(0). */
export async function startPostSink<T = unknown>(): Promise<PostSink<T>> {
  const posted: T[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => {
      body += d;
    });
    req.on('end', () => {
      posted.push(JSON.parse(body));
      res.end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/out`,
    posted,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Options for {@link startRuntimeWithFlow}. */
export interface RuntimeWithFlowOptions {
  /** A temp dir: the flow is written to `<dir>/flow.json`, the runtime's data lives in `<dir>/data`. */
  dir: string;
  /** The Node-RED flow (an array of node objects). */
  flow: unknown[];
  /** privacy.siteKey (card pseudonyms depend on it). */
  siteKey: string;
  /** commands.allow (default none). */
  allow?: string[];
  /** nodeRed.editor (default false). */
  editor?: boolean;
}

/**
 * Node-RED's userDir under a runtime started by {@link startRuntimeWithFlow}
 * (`<dataDir>/node-red`): where it keeps `flow_cred.json`, not beside the flow file.
 */
export function nodeRedUserDir(dir: string): string {
  return path.join(dir, 'data', 'node-red');
}

/**
 * Write `flow` to `<dir>/flow.json` and start a real Runtime (HTTP on a free
 * port, embedded Node-RED) running it; a failed start is stopped before it rejects.
 */
export async function startRuntimeWithFlow(opts: RuntimeWithFlowOptions): Promise<Runtime> {
  const flowFile = path.join(opts.dir, 'flow.json');
  await writeFile(flowFile, JSON.stringify(opts.flow));
  const config: SiteConfig = {
    site: 'test-site',
    edge: 'test-edge',
    dataDir: path.join(opts.dir, 'data'),
    http: { host: '127.0.0.1', port: 0 },
    outbox: { maxBytes: 1 << 24 },
    privacy: { siteKey: opts.siteKey, rawCards: false },
    commands: { publicKeys: [], allow: opts.allow ?? [] },
    nodeRed: { editor: opts.editor ?? false, flowFile },
    log: { level: 'warn' },
  };
  const runtime = new Runtime({ config, log: silentLogger() });
  try {
    await runtime.start();
  } catch (err) {
    // The caller never gets this runtime to stop: stop what did start.
    await runtime.stop().catch(() => undefined);
    throw err;
  }
  return runtime;
}
