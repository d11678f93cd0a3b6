/**
 * Edgeward's library entry point: what an embedding program, a bench or a
 * test imports. The CLI (edge/cli.ts) is built on the same exports.
 */
export { EventBus, type BusEvents } from './bus.js';
export { type Clock, systemClock } from './clock.js';
export { describeConfig, isLoopbackHost, loadConfig, parseConfig } from './config.js';
export type { SiteConfig, UplinkConfig } from './config-types.js';
export * from './envelope.js';
export { EdgewardError, isEdgewardError } from './errors.js';
export { type Health, type HttpApiDeps, MAX_BODY_BYTES, mountHttpApi, type RuntimeStatus } from './http.js';
export { createLogger, type Logger, silentLogger } from './log.js';
export { Metrics, type MetricsSources } from './metrics.js';
export type { EdgewardNodeApi } from './node-api.js';
export { Registry } from './registry.js';
export { Runtime, type RuntimeOptions, UPLINK_UNHEALTHY_AFTER_MS } from './runtime.js';
export type { CommandRequest, Driver, DriverContext } from '../drivers/driver.js';
export type { Outbox, OutboxStats, StoredEvent } from '../sync/outbox-api.js';
