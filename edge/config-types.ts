/** The site config after validation, defaults filled and `env:NAME` secrets resolved (SPEC.md "Site config"). */
export interface SiteConfig {
  site: string;
  edge: string;
  dataDir: string;
  http: { host: string; port: number; token?: string };
  uplink?: UplinkConfig;
  outbox: { maxBytes: number };
  privacy: { siteKey: string; rawCards: boolean };
  commands: { publicKeys: string[]; allow: string[] };
  nodeRed: {
    flowFile?: string;
    editor: boolean;
    adminAuth?: { username: string; passwordHash: string };
  };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
}

export interface UplinkConfig {
  url: string;
  username?: string;
  password?: string;
  ca?: string;
  cert?: string;
  key?: string;
  ack: 'central' | 'broker';
  batch: { maxEvents: number; maxBytes: number; lingerMs: number };
  compress: 'gzip' | 'none';
  /** Optional extension: zlib level of `compress: gzip`, 1 (fastest, the default) to 9. */
  gzipLevel?: number;
  /** Optional extensions: resend unacked batches after this long (ack: central). */
  ackTimeoutMs?: number;
  /** Optional: at most this many batches awaiting an ack at once. */
  maxInflight?: number;
  /**
   * Optional extension: the largest MQTT packet the broker takes (default 128 KiB).
   * Bigger batches are split; an event that cannot fit alone is refused at ingest.
   */
  maxPacketBytes?: number;
}
