/**
 * JSON schema of the site config (SPEC.md "Site config (contract)").
 * `additionalProperties: false` at every level so a typo'd key is an error,
 * not a silently ignored setting; defaults are filled by ajv (`useDefaults`).
 * Cross-field rules (token off loopback, editor auth, key lengths) live in
 * edge/config.ts because JSON schema cannot say them with readable errors.
 */

export const NAME_PATTERN = '^[a-z0-9-]{1,64}$';

/** Actions a downlink command may carry (SPEC.md "Downlink commands"). */
export const DEFAULT_ALLOWED_ACTIONS = ['door.unlock', 'door.lock', 'door.hold', 'fire.silence', 'edge.ping'];

export const DEFAULT_OUTBOX_MAX_BYTES = 1024 * 1024 * 1024;

export const siteConfigSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['site', 'edge', 'dataDir', 'privacy'],
  properties: {
    site: { type: 'string', pattern: NAME_PATTERN },
    edge: { type: 'string', pattern: NAME_PATTERN },
    dataDir: { type: 'string', minLength: 1 },
    http: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        host: { type: 'string', minLength: 1, default: '127.0.0.1' },
        port: { type: 'integer', minimum: 0, maximum: 65535, default: 1880 },
        token: { type: 'string', minLength: 16 },
      },
    },
    uplink: {
      type: 'object',
      additionalProperties: false,
      required: ['url'],
      properties: {
        url: { type: 'string', pattern: '^mqtts?://[^\\s]+$' },
        username: { type: 'string', minLength: 1 },
        password: { type: 'string' },
        ca: { type: 'string', minLength: 1 },
        cert: { type: 'string', minLength: 1 },
        key: { type: 'string', minLength: 1 },
        ack: { type: 'string', enum: ['central', 'broker'], default: 'central' },
        batch: {
          type: 'object',
          additionalProperties: false,
          default: {},
          properties: {
            maxEvents: { type: 'integer', minimum: 1, maximum: 100000, default: 500 },
            maxBytes: { type: 'integer', minimum: 1024, maximum: 268435456, default: 262144 },
            lingerMs: { type: 'integer', minimum: 0, maximum: 60000, default: 250 },
          },
        },
        compress: { type: 'string', enum: ['gzip', 'none'], default: 'gzip' },
        gzipLevel: { type: 'integer', minimum: 1, maximum: 9 },
        ackTimeoutMs: { type: 'integer', minimum: 100 },
        maxInflight: { type: 'integer', minimum: 1 },
        maxPacketBytes: { type: 'integer', minimum: 4096, maximum: 268435455 },
      },
    },
    outbox: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        maxBytes: { type: 'integer', minimum: 1048576, default: DEFAULT_OUTBOX_MAX_BYTES },
      },
    },
    privacy: {
      type: 'object',
      additionalProperties: false,
      required: ['siteKey'],
      properties: {
        // 16+ characters: the pseudonyms are only as unguessable as this key.
        siteKey: { type: 'string', minLength: 16 },
        rawCards: { type: 'boolean', default: false },
      },
    },
    commands: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        publicKeys: { type: 'array', items: { type: 'string' }, default: [] },
        allow: {
          type: 'array',
          items: { type: 'string', pattern: '^[a-z][a-z0-9_-]*(\\.[a-z0-9_-]+)+$' },
          default: DEFAULT_ALLOWED_ACTIONS,
        },
      },
    },
    nodeRed: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        flowFile: { type: 'string', minLength: 1 },
        editor: { type: 'boolean', default: false },
        adminAuth: {
          type: 'object',
          additionalProperties: false,
          required: ['username', 'passwordHash'],
          properties: {
            username: { type: 'string', minLength: 1 },
            passwordHash: { type: 'string', pattern: '^\\$2[aby]?\\$\\d{2}\\$[./A-Za-z0-9]{53}$' },
          },
        },
      },
    },
    log: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        level: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
      },
    },
  },
} as const;
